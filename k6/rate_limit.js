// The rate limit with the documented defaults: a fresh key gets 500 authenticated
// requests in a minute, the 501st is 429 with Retry-After, and every limited response
// carries the x-ratelimit headers.
import http from 'k6/http';
import { check, fail } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const KEY = __ENV.API_KEY;
const LIMIT = Number(__ENV.LIMIT || 500);

export const options = {
  vus: 1,
  iterations: 1,
  thresholds: { checks: ['rate==1'] },
};

export default function () {
  const headers = { 'x-api-key': KEY };
  const requests = Array.from({ length: LIMIT }, () => ['GET', `${BASE}/api/v1/customers/me`, null, { headers }]);
  const responses = [];
  for (let i = 0; i < requests.length; i += 50) responses.push(...http.batch(requests.slice(i, i + 50)));
  check(responses, {
    'the first 500 succeed': (rs) => rs.every((r) => r.status === 200),
    'each carries the limit headers': (rs) => rs.every((r) => r.headers['X-Ratelimit-Limit'] === String(LIMIT) && r.headers['X-Ratelimit-Remaining'] !== undefined && r.headers['X-Ratelimit-Reset'] !== undefined),
  });
  const over = http.get(`${BASE}/api/v1/customers/me`, { headers });
  const ok = check(over, {
    'the 501st is 429': (r) => r.status === 429,
    'with Retry-After': (r) => Number(r.headers['Retry-After']) > 0,
    'with remaining 0': (r) => r.headers['X-Ratelimit-Remaining'] === '0',
    'with the error body': (r) => r.json('error.code') === 'RATE_LIMITED',
  });
  if (!ok) fail(`501st request: ${over.status} ${over.body}`);
}
