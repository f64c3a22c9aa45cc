// Signed Stripe webhook ingest: the original plans' 1,000 a minute sustained plus a
// 50/s burst, each event signed exactly as Stripe signs it.
import http from 'k6/http';
import crypto from 'k6/crypto';
import { check } from 'k6';

const BASE = __ENV.BASE_URL || 'http://127.0.0.1:8080';
const SECRET = __ENV.WEBHOOK_SECRET;
const CUSTOMER = __ENV.STRIPE_CUSTOMER;
const PRICE = __ENV.PRO_PRICE_ID || 'price_rsolv_pro_monthly';

const PEAK = Number(__ENV.PEAK_RATE || 0);
const scenarios = {
  sustained: { executor: 'constant-arrival-rate', rate: 1000, timeUnit: '1m', duration: __ENV.DURATION || '30s', preAllocatedVUs: 20 },
  burst: { executor: 'constant-arrival-rate', rate: 50, timeUnit: '1s', duration: '10s', startTime: '10s', preAllocatedVUs: 50 },
};
// PEAK_RATE=n adds 10 s at n events/s after the others: the ingest target, not the floor.
if (PEAK > 0) {
  scenarios.peak = { executor: 'constant-arrival-rate', rate: PEAK, timeUnit: '1s', duration: '10s', startTime: __ENV.DURATION || '30s', preAllocatedVUs: 200, maxVUs: 1000 };
}

export const options = {
  scenarios,
  thresholds: {
    // The original plans' floor: p99 < 200 ms and < 0.1 % failures.
    http_req_duration: ['p(99)<200'],
    http_req_failed: ['rate<0.001'],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const now = Math.floor(Date.now() / 1000);
  const id = `${__VU}_${__ITER}_${Date.now()}`;
  const body = JSON.stringify({
    id: `evt_k6_${id}`, object: 'event', api_version: '2024-06-20', created: now, livemode: false,
    pending_webhooks: 1, request: { id: null, idempotency_key: null }, type: 'invoice.payment_succeeded',
    data: { object: {
      id: `in_k6_${id}`, object: 'invoice', customer: CUSTOMER, subscription: 'sub_k6', status: 'paid',
      amount_due: 59900, amount_paid: 59900, currency: 'usd', paid: true,
      lines: { object: 'list', data: [{ plan: { id: PRICE }, price: { id: PRICE }, amount: 59900 }] },
    } },
  });
  const signature = crypto.hmac('sha256', SECRET, `${now}.${body}`, 'hex');
  const res = http.post(`${BASE}/api/webhooks/stripe`, body, {
    headers: { 'Content-Type': 'application/json', 'Stripe-Signature': `t=${now},v1=${signature}` },
  });
  check(res, { 'event accepted (200)': (r) => r.status === 200 });
}
