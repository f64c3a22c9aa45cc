// The rate limit with the documented defaults: a fresh key gets 500 authenticated
// requests in a minute, the 501st is 429 with Retry-After, and every limited response
// carries the x-ratelimit headers; 120 made-up keys from one address are refused and
// the 121st is 429 (no bucket per unknown key).
import http from 'k6/http';
import { check, fail } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const KEY = __ENV.API_KEY;
const LIMIT = Number(__ENV.LIMIT || 500);
const ANON_LIMIT = Number(__ENV.ANON_LIMIT || 120);

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

  // Made-up keys get no bucket of their own: they share their address's budget for
  // requests without a live key (RATE_LIMIT_ANONYMOUS_PER_MINUTE, 120).
  const madeUp = (i) => ({ headers: { 'x-api-key': `rsolv_${String(i).padStart(43, '0')}` } });
  const guesses = Array.from({ length: ANON_LIMIT }, (_, i) => ['GET', `${BASE}/api/v1/customers/me`, null, madeUp(i)]);
  const refused = [];
  for (let i = 0; i < guesses.length; i += 50) refused.push(...http.batch(guesses.slice(i, i + 50)));
  check(refused, { 'the made-up keys are refused': (rs) => rs.every((r) => r.status === 401) });
  const spent = http.get(`${BASE}/api/v1/customers/me`, madeUp(ANON_LIMIT));
  const limited = check(spent, {
    'one guess more is 429': (r) => r.status === 429,
    'its Retry-After': (r) => Number(r.headers['Retry-After']) > 0,
  });
  if (!limited) fail(`guess ${ANON_LIMIT + 1}: ${spent.status} ${spent.body}`);
}
