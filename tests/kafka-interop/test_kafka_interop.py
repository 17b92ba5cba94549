"""Flare's Kafka log against an independent client (confluent-kafka, with its own librdkafka):
what Flare produces is readable by it, and what it produces Flare reads, with keys, headers and
partitions (Kafka's murmur2) intact."""

import json
import subprocess
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer


def post(base, resource_type, body, correlation):
    request = urllib.request.Request(
        f"{base}/{resource_type}", data=json.dumps(body).encode(), method="POST",
        headers={"content-type": "application/fhir+json", "x-correlation-id": correlation})
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 201
        return json.load(response)


def test_a_confluent_consumer_reads_the_events_flare_produced(broker, flare_server):
    created = [post(flare_server, "Patient", {"resourceType": "Patient", "name": [{"family": f"W{i}"}]},
                    f"witness-{i}") for i in range(3)]
    consumer = Consumer({"bootstrap.servers": broker, "group.id": f"witness-{uuid.uuid4()}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe(["fhir.Patient"])
    messages = []
    for _ in range(120):
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            messages.append(message)
        if len(messages) == 3:
            break
    consumer.close()
    assert len(messages) == 3
    by_id = {}
    for message in messages:
        event = json.loads(message.value())
        headers = {k: v.decode() for k, v in (message.headers() or [])}
        assert event["type"] == "PatientCreated"
        assert headers["eventId"] == event["metadata"]["eventId"]
        assert headers["correlationId"].startswith("witness-")
        by_id[message.key().decode()] = event
    assert set(by_id) == {f"Patient/{p['id']}" for p in created}


def test_flare_reads_what_a_confluent_producer_wrote(broker, kafka_tail_bin):
    topic = f"interop.{uuid.uuid4().hex}"
    producer = Producer({"bootstrap.servers": broker, "enable.idempotence": True,
                         "partitioner": "murmur2_random"})
    # Four partitions, so that where each key lands is worth checking.
    delivered = {}

    def on_delivery(err, message):
        assert err is None, err
        delivered[message.key().decode()] = message.partition()

    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": broker})
    admin.create_topics([NewTopic(topic, num_partitions=4, replication_factor=1)])[topic].result(timeout=30)
    for i in range(12):
        producer.produce(topic, key=f"Patient/{i}", value=json.dumps({"n": i}).encode(),
                         headers=[("eventId", f"e-{i}"), ("binary", b"\x00\xff")],
                         on_delivery=on_delivery)
    assert producer.flush(30) == 0
    output = subprocess.run([kafka_tail_bin, broker, f"tail-{uuid.uuid4()}", "12", topic],
                            capture_output=True, text=True, timeout=120)
    assert output.returncode == 0, output.stderr
    records = [json.loads(line) for line in output.stdout.splitlines()]
    assert len(records) == 12
    for record in records:
        n = json.loads(record["value"])["n"]
        assert record["key"] == f"Patient/{n}"
        assert ["eventId", f"e-{n}"] in record["headers"]
        # Flare places keys with Kafka's murmur2, like the Java client and this producer.
        assert record["partition"] == delivered[record["key"]]
