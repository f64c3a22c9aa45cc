// Validates KEDA objects against KEDA's API schemas, as generated from KEDA's own API
// types by the npm package @kubernetes-models/keda (installed into .tools/ by
// scripts/test; not vendored here). Called by deploy/check.py.
//
// Usage: node deploy/keda-schema.mjs <node_modules dir>  < objects.json
// Reads a JSON array of objects; prints one line per problem; exits 1 if any.
import { readFileSync } from "node:fs";

const modules = process.argv[2];
const model = async (kind) =>
    (await import(`${modules}/@kubernetes-models/keda/keda.sh/v1alpha1/${kind}.js`))[kind];
const kinds = {
    ScaledObject: await model("ScaledObject"),
    TriggerAuthentication: await model("TriggerAuthentication"),
};

let problems = 0;
for (const object of JSON.parse(readFileSync(0, "utf8"))) {
    const name = `${object.kind}/${object.metadata?.name}`;
    const Kind = kinds[object.kind];
    if (!Kind) {
        console.log(`${name}: not a KEDA kind this check knows`);
        problems++;
        continue;
    }
    try {
        new Kind(object).validate();
    } catch (error) {
        for (const e of error.errors ?? [{ instancePath: "", message: error.message }]) {
            console.log(`${name}: ${e.instancePath || "/"} ${e.message}`);
            problems++;
        }
    }
}
process.exit(problems ? 1 : 0);
