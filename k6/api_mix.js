// The authenticated API mix: usage summaries and fix reports with one customer's key.
// Run with the per-key limits raised (scripts/load does, and says so); rate_limit.js
// checks the limits themselves.
import http from 'k6/http';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const KEY = __ENV.API_KEY;

// A refused fix (402: no credits, no card) is an answer, not a failure.
http.setResponseCallback(http.expectedStatuses(200, 202, 402));

export const options = {
  scenarios: {
    mix: { executor: 'constant-arrival-rate', rate: Number(__ENV.RATE || 200), timeUnit: '1s', duration: __ENV.DURATION || '20s', preAllocatedVUs: 50, maxVUs: 200 },
  },
  thresholds: {
    // The original plans' floor: p95 < 200 ms.
    'http_req_duration{name:me}': ['p(95)<200'],
    'http_req_duration{name:fix}': ['p(95)<200'],
    http_req_failed: ['rate<0.01'],
  },
};

export default function () {
  const headers = { 'x-api-key': KEY, 'Content-Type': 'application/json' };
  if (__ITER % 2 === 0) {
    const res = http.get(`${BASE}/api/v1/customers/me`, { headers, tags: { name: 'me' } });
    check(res, { 'summary (200)': (r) => r.status === 200 });
  } else {
    const body = JSON.stringify({ fix_id: `k6-${__VU}-${__ITER}-${Date.now()}`, repo: 'org/repo' });
    const res = http.post(`${BASE}/api/v1/usage/fixes`, body, { headers, tags: { name: 'fix' } });
    // A customer out of credits and without a card is refused with 402: an answer, not a failure.
    check(res, { 'fix accepted or refused (202/402)': (r) => r.status === 202 || r.status === 402 });
  }
}
