// Interop: @medplum/core's FHIRcast client against Flare's hub.
// Usage: node --experimental-websocket medplum.mjs http://127.0.0.1:PORT/
// (run.sh installs @medplum/core 4.5.x and starts `flare serve` with the hub enabled).
import { MedplumClient, createFhircastMessagePayload } from '@medplum/core';
import assert from 'node:assert/strict';

const baseUrl = process.argv[2];
const medplum = new MedplumClient({ baseUrl, fhircastHubUrl: 'fhircast', fetch: globalThis.fetch });
const topic = `interop-${Date.now()}`;

function nextMessage(connection) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error('no message within 15 s')), 15000);
    connection.addEventListener('message', (event) => {
      clearTimeout(timer);
      resolve(event.payload);
    }, { once: true });
  });
}

const subscription = await medplum.fhircastSubscribe(topic, ['Patient-open', 'Patient-close']);
assert.match(subscription.endpoint, /^ws:\/\/.+\/fhircast\/ws\/[0-9a-f]{32}$/);
const connection = medplum.fhircastConnect(subscription);
await new Promise((resolve, reject) => {
  const timer = setTimeout(() => reject(new Error('no connect within 15 s')), 15000);
  connection.addEventListener('connect', () => { clearTimeout(timer); resolve(); }, { once: true });
});

const received = nextMessage(connection);
await medplum.fhircastPublish(topic, 'Patient-open', [
  { key: 'patient', resource: { resourceType: 'Patient', id: 'interop-patient' } },
]);
const payload = await received;
assert.equal(payload.event['hub.event'], 'Patient-open');
assert.equal(payload.event.context[0].resource.id, 'interop-patient');

const context = await medplum.fhircastGetContext(topic);
assert.equal(context['context.type'], 'Patient');
assert.equal(context.context[0].resource.id, 'interop-patient');

await medplum.fhircastUnsubscribe(subscription);
connection.disconnect();
console.log('medplum interop: subscribe, connect, publish, receive, get context, unsubscribe: ok');
process.exit(0);
