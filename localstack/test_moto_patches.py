"""Checks that localstack/moto_server_serialized.py answers exactly as plain moto does.

Starts plain `moto_server` and the patched server on free ports, runs the same DynamoDB requests
against both through boto3 (transactions that succeed, that fail on a condition after earlier
operations changed items, that name one item twice; queries with pages, limits, both directions,
filters, projections, counts, on range and hash-only tables, on an index, on an absent
partition), and compares every answer and the tables' whole contents after each step. Exits 1
naming the first difference. Run by `./dev test`; by hand:

    .venv/bin/python localstack/test_moto_patches.py
"""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import boto3
import botocore

HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(cmd, port):
    proc = subprocess.Popen(
        cmd + ["-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(150):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/moto-api/", timeout=1)
            return proc
        except Exception:
            if proc.poll() is not None:
                sys.exit(f"{cmd[-1]} exited at start")
            time.sleep(0.2)
    proc.kill()
    sys.exit(f"{cmd[-1]} did not answer on port {port}")


def client(port):
    return boto3.client(
        "dynamodb",
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )


S = lambda v: {"S": v}  # noqa: E731
N = lambda v: {"N": str(v)}  # noqa: E731


def call(c, op, **kw):
    """The answer of one request, or its error code (moto's messages may name ids)."""
    try:
        answer = getattr(c, op)(**kw)
        answer.pop("ResponseMetadata", None)
        return answer
    except botocore.exceptions.ClientError as e:
        reasons = e.response.get("CancellationReasons")
        return {"error": e.response["Error"]["Code"], "reasons": reasons}


def contents(c):
    out = {}
    for table in ("t", "h"):
        items = call(c, "scan", TableName=table, ConsistentRead=True).get("Items", [])
        out[table] = sorted(repr(sorted(i.items())) for i in items)
    return out


def steps():
    """(description, operation, arguments) in order."""
    yield "create range table", "create_table", dict(
        TableName="t",
        KeySchema=[
            {"AttributeName": "pk", "KeyType": "HASH"},
            {"AttributeName": "sk", "KeyType": "RANGE"},
        ],
        AttributeDefinitions=[
            {"AttributeName": "pk", "AttributeType": "S"},
            {"AttributeName": "sk", "AttributeType": "N"},
            {"AttributeName": "g", "AttributeType": "S"},
        ],
        GlobalSecondaryIndexes=[
            {
                "IndexName": "by-g",
                "KeySchema": [{"AttributeName": "g", "KeyType": "HASH"}],
                "Projection": {"ProjectionType": "ALL"},
            }
        ],
        BillingMode="PAY_PER_REQUEST",
    )
    yield "create hash table", "create_table", dict(
        TableName="h",
        KeySchema=[{"AttributeName": "id", "KeyType": "HASH"}],
        AttributeDefinitions=[{"AttributeName": "id", "AttributeType": "S"}],
        BillingMode="PAY_PER_REQUEST",
    )
    for i in range(600):
        yield None, "put_item", dict(
            TableName="t",
            Item={"pk": S(f"p{i % 12}"), "sk": N(i), "g": S(f"g{i % 5}"), "v": S("x" * (i % 40))},
        )
    for i in range(30):
        yield None, "put_item", dict(TableName="h", Item={"id": S(f"k{i}"), "n": N(i)})
    fail = {
        "ConditionCheck": {
            "TableName": "h",
            "Key": {"id": S("absent")},
            "ConditionExpression": "attribute_exists(id)",
        }
    }
    yield "transaction failing after a put, an update and a delete", "transact_write_items", dict(
        TransactItems=[
            {"Put": {"TableName": "t", "Item": {"pk": S("new"), "sk": N(1)}}},
            {"Put": {"TableName": "h", "Item": {"id": S("k1"), "n": N(99)}}},
            {
                "Update": {
                    "TableName": "t",
                    "Key": {"pk": S("p1"), "sk": N(1)},
                    "UpdateExpression": "SET v = :v, w = :w",
                    "ExpressionAttributeValues": {":v": S("changed"), ":w": N(7)},
                }
            },
            {"Delete": {"TableName": "h", "Key": {"id": S("k2")}}},
            {"Delete": {"TableName": "t", "Key": {"pk": S("p3"), "sk": N(3)}}},
            fail,
        ]
    )
    yield "transaction failing on its first operation", "transact_write_items", dict(
        TransactItems=[fail, {"Put": {"TableName": "h", "Item": {"id": S("late")}}}]
    )
    yield "transaction naming one item twice", "transact_write_items", dict(
        TransactItems=[
            {"Put": {"TableName": "h", "Item": {"id": S("twice")}}},
            {"Delete": {"TableName": "h", "Key": {"id": S("twice")}}},
        ]
    )
    yield "transaction with a condition on a changed item", "transact_write_items", dict(
        TransactItems=[
            {
                "Update": {
                    "TableName": "h",
                    "Key": {"id": S("k5")},
                    "UpdateExpression": "SET n = n + :one",
                    "ConditionExpression": "n = :five",
                    "ExpressionAttributeValues": {":one": N(1), ":five": N(5)},
                }
            },
            {
                "Put": {
                    "TableName": "t",
                    "Item": {"pk": S("p0"), "sk": N(0)},
                    "ConditionExpression": "attribute_not_exists(pk)",
                }
            },
        ]
    )
    yield "transaction that succeeds", "transact_write_items", dict(
        TransactItems=[
            {"Put": {"TableName": "t", "Item": {"pk": S("new"), "sk": N(2), "g": S("g1")}}},
            {"Delete": {"TableName": "h", "Key": {"id": S("k3")}}},
            {
                "Update": {
                    "TableName": "t",
                    "Key": {"pk": S("p2"), "sk": N(2)},
                    "UpdateExpression": "REMOVE v",
                }
            },
        ]
    )
    key = "pk = :p"
    yield "query a partition", "query", dict(
        TableName="t", KeyConditionExpression=key, ExpressionAttributeValues={":p": S("p3")}
    )
    yield "query a new partition", "query", dict(
        TableName="t", KeyConditionExpression=key, ExpressionAttributeValues={":p": S("new")}
    )
    yield "query an absent partition", "query", dict(
        TableName="t", KeyConditionExpression=key, ExpressionAttributeValues={":p": S("none")}
    )
    yield "query a count", "query", dict(
        TableName="t",
        KeyConditionExpression=key,
        ExpressionAttributeValues={":p": S("p5")},
        Select="COUNT",
        ConsistentRead=True,
    )
    yield "query backwards with a range condition and a limit", "query", dict(
        TableName="t",
        KeyConditionExpression="pk = :p AND sk > :s",
        ExpressionAttributeValues={":p": S("p4"), ":s": N(200)},
        ScanIndexForward=False,
        Limit=9,
    )
    yield "query a second page", "query", dict(
        TableName="t",
        KeyConditionExpression=key,
        ExpressionAttributeValues={":p": S("p6")},
        Limit=7,
        ExclusiveStartKey={"pk": S("p6"), "sk": N(90)},
    )
    yield "query with a filter and a projection", "query", dict(
        TableName="t",
        KeyConditionExpression="pk = :p AND sk BETWEEN :a AND :b",
        FilterExpression="size(v) > :n",
        ProjectionExpression="sk, v",
        ExpressionAttributeValues={":p": S("p7"), ":a": N(50), ":b": N(500), ":n": N(20)},
    )
    yield "query an index", "query", dict(
        TableName="t",
        IndexName="by-g",
        KeyConditionExpression="g = :g",
        ExpressionAttributeValues={":g": S("g1")},
        Limit=40,
    )
    yield "query a hash-only table", "query", dict(
        TableName="h", KeyConditionExpression="id = :i", ExpressionAttributeValues={":i": S("k7")}
    )
    yield "query an absent hash key", "query", dict(
        TableName="h", KeyConditionExpression="id = :i", ExpressionAttributeValues={":i": S("zz")}
    )


def main():
    plain_port, patched_port = free_port(), free_port()
    plain = start([os.path.join(VENV_BIN, "moto_server")], plain_port)
    patched = start(
        [sys.executable, os.path.join(HERE, "moto_server_serialized.py")], patched_port
    )
    try:
        a, b = client(plain_port), client(patched_port)
        checked = 0
        for what, op, kw in steps():
            ra, rb = call(a, op, **kw), call(b, op, **kw)
            if what is None:
                continue
            if op == "create_table":
                continue
            checked += 1
            if ra != rb:
                sys.exit(
                    f"moto patches: '{what}' answers differently:\n"
                    f" plain   {str(ra)[:600]}\n patched {str(rb)[:600]}"
                )
            if ("failing" in what or "twice" in what or "changed item" in what) and "error" not in ra:
                sys.exit(f"moto patches: '{what}' did not fail, so it checks no roll-back")
            empty = "error" not in ra and ra.get("Count", 0) == 0
            if op == "query" and empty and "absent" not in what:
                sys.exit(f"moto patches: '{what}' found nothing, so it checks nothing")
            if op == "transact_write_items" and contents(a) != contents(b):
                sys.exit(f"moto patches: the tables differ after '{what}'")
        print(f"moto patches: {checked} requests answered as plain moto does, tables identical")
    finally:
        plain.kill()
        patched.kill()


if __name__ == "__main__":
    main()
