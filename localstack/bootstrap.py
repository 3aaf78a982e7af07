#!/usr/bin/env python3
"""Create cipherpost's DynamoDB tables and S3 bucket from infra/tables.json.

Talks to AWS_ENDPOINT_URL (default http://127.0.0.1:4566: moto or LocalStack) with region
us-east-1 and the test credentials unless the environment says otherwise. Idempotent: a table or
bucket that exists already is checked (keys must match the definition) and its settings are
applied again.

    bootstrap.py            create everything (the default)
    bootstrap.py --check    only check that everything exists as defined (exit 1 if not)
    bootstrap.py --env      print the export lines naming the tables and bucket (no AWS calls)
    bootstrap.py --list     print the tables and buckets that exist at the endpoint

Physical names honour the same variables the functions read (CIPHERPOST_TABLE_<LOGICAL>,
CIPHERPOST_BUCKET), so a test run with its own names gets its own tables.
"""

import argparse
import json
import os
import signal
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFINITION = os.path.join(ROOT, "infra", "tables.json")
KEY_TYPES = {"S", "N", "B"}


class DefinitionError(Exception):
    pass


def load_definition(path=DEFINITION):
    with open(path, encoding="utf-8") as f:
        d = json.load(f)
    if d.get("version") != 1:
        raise DefinitionError(f"{path}: unsupported version {d.get('version')!r} (expected 1)")
    if d.get("billing_mode") not in ("PAY_PER_REQUEST", "PROVISIONED"):
        raise DefinitionError(f"{path}: billing_mode must be PAY_PER_REQUEST or PROVISIONED")
    for logical, t in d.get("tables", {}).items():
        where = f"{path}: table {logical!r}"
        for field in ("env", "default_name", "partition_key"):
            if not t.get(field):
                raise DefinitionError(f"{where}: missing {field}")
        for key in (t["partition_key"], t.get("sort_key")):
            if key is None:
                continue
            if not key.get("name") or key.get("type") not in KEY_TYPES:
                raise DefinitionError(f"{where}: a key needs a name and a type in {sorted(KEY_TYPES)}")
    for logical, b in d.get("buckets", {}).items():
        for field in ("env", "default_name"):
            if not b.get(field):
                raise DefinitionError(f"{path}: bucket {logical!r}: missing {field}")
    return d


def physical_name(spec):
    return os.environ.get(spec["env"]) or spec["default_name"]


def env_lines(d):
    lines = []
    for spec in list(d["tables"].values()) + list(d["buckets"].values()):
        lines.append(f"export {spec['env']}={physical_name(spec)}")
    return lines


def clients():
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        sys.exit("bootstrap: boto3 is missing; run `localstack/cloud.sh install` first "
                 "(or run this script with the project's .venv/bin/python)")
    endpoint = os.environ.get("AWS_ENDPOINT_URL", "http://127.0.0.1:4566")
    session = boto3.session.Session(
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "test"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "test"),
        region_name=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    cfg = Config(retries={"max_attempts": 3, "mode": "standard"}, s3={"addressing_style": "path"})
    return (session.client("dynamodb", endpoint_url=endpoint, config=cfg),
            session.client("s3", endpoint_url=endpoint, config=cfg),
            endpoint)


def key_schema(spec):
    keys = [{"AttributeName": spec["partition_key"]["name"], "KeyType": "HASH"}]
    attrs = [{"AttributeName": spec["partition_key"]["name"], "AttributeType": spec["partition_key"]["type"]}]
    if spec.get("sort_key"):
        keys.append({"AttributeName": spec["sort_key"]["name"], "KeyType": "RANGE"})
        attrs.append({"AttributeName": spec["sort_key"]["name"], "AttributeType": spec["sort_key"]["type"]})
    return keys, attrs


def describe(ddb, name):
    try:
        return ddb.describe_table(TableName=name)["Table"]
    except ddb.exceptions.ResourceNotFoundException:
        return None


def table_problems(ddb, logical, spec, table):
    """What differs between an existing table and its definition (empty when it matches)."""
    problems = []
    keys, attrs = key_schema(spec)
    have_keys = sorted((k["AttributeName"], k["KeyType"]) for k in table["KeySchema"])
    want_keys = sorted((k["AttributeName"], k["KeyType"]) for k in keys)
    if have_keys != want_keys:
        problems.append(f"keys {have_keys} differ from the definition {want_keys}")
    have_types = {a["AttributeName"]: a["AttributeType"] for a in table.get("AttributeDefinitions", [])}
    for a in attrs:
        if have_types.get(a["AttributeName"]) != a["AttributeType"]:
            problems.append(f"key {a['AttributeName']} has type {have_types.get(a['AttributeName'])}, "
                            f"defined {a['AttributeType']}")
    if spec.get("ttl_attribute"):
        ttl = ddb.describe_time_to_live(TableName=table["TableName"])["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING") or \
                ttl.get("AttributeName") != spec["ttl_attribute"]:
            problems.append(f"TTL on {spec['ttl_attribute']!r} is not enabled ({ttl})")
    return [f"table {logical} ({table['TableName']}): {p}" for p in problems]


def ensure_table(ddb, logical, spec, billing_mode):
    name = physical_name(spec)
    table = describe(ddb, name)
    created = table is None
    if created:
        keys, attrs = key_schema(spec)
        args = dict(TableName=name, KeySchema=keys, AttributeDefinitions=attrs, BillingMode=billing_mode)
        if billing_mode == "PROVISIONED":
            args["ProvisionedThroughput"] = {"ReadCapacityUnits": 5, "WriteCapacityUnits": 5}
        try:
            ddb.create_table(**args)
        except ddb.exceptions.ResourceInUseException:
            created = False  # created concurrently by someone else: fine
        deadline = time.time() + 60
        while True:
            table = describe(ddb, name)
            if table and table.get("TableStatus") == "ACTIVE":
                break
            if time.time() > deadline:
                raise SystemExit(f"bootstrap: table {name} did not become ACTIVE within 60 s")
            time.sleep(0.2)
    if spec.get("ttl_attribute"):
        ttl = ddb.describe_time_to_live(TableName=name)["TimeToLiveDescription"]
        if ttl.get("TimeToLiveStatus") not in ("ENABLED", "ENABLING"):
            ddb.update_time_to_live(
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": spec["ttl_attribute"]},
            )
    problems = table_problems(ddb, logical, spec, table)
    if problems:
        raise SystemExit("bootstrap: an existing table does not match infra/tables.json "
                         "(delete it or restart the emulator):\n  " + "\n  ".join(problems))
    return name, created


def bucket_exists(s3, name):
    try:
        s3.head_bucket(Bucket=name)
        return True
    except s3.exceptions.ClientError as e:
        if e.response.get("Error", {}).get("Code") in ("404", "NoSuchBucket", "NotFound"):
            return False
        raise


def ensure_bucket(s3, logical, spec):
    name = physical_name(spec)
    created = not bucket_exists(s3, name)
    if created:
        region = s3.meta.region_name
        args = {"Bucket": name}
        if region != "us-east-1":
            args["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            s3.create_bucket(**args)
        except s3.exceptions.BucketAlreadyOwnedByYou:
            created = False
    rules = []
    if spec.get("expire_after_days"):
        rules.append({"ID": "expire-objects", "Status": "Enabled", "Filter": {"Prefix": ""},
                      "Expiration": {"Days": int(spec["expire_after_days"])}})
    if spec.get("abort_incomplete_multipart_upload_days"):
        rules.append({"ID": "abort-incomplete-uploads", "Status": "Enabled", "Filter": {"Prefix": ""},
                      "AbortIncompleteMultipartUpload": {
                          "DaysAfterInitiation": int(spec["abort_incomplete_multipart_upload_days"])}})
    if rules:
        s3.put_bucket_lifecycle_configuration(Bucket=name, LifecycleConfiguration={"Rules": rules})
    if spec.get("block_public_access"):
        s3.put_public_access_block(Bucket=name, PublicAccessBlockConfiguration={
            "BlockPublicAcls": True, "IgnorePublicAcls": True,
            "BlockPublicPolicy": True, "RestrictPublicBuckets": True})
    if spec.get("encryption"):
        s3.put_bucket_encryption(Bucket=name, ServerSideEncryptionConfiguration={"Rules": [
            {"ApplyServerSideEncryptionByDefault": {"SSEAlgorithm": spec["encryption"]}}]})
    return name, created


def bucket_problems(s3, logical, spec):
    name = physical_name(spec)
    if not bucket_exists(s3, name):
        return [f"bucket {logical} ({name}) does not exist"]
    problems = []
    if spec.get("expire_after_days"):
        try:
            rules = s3.get_bucket_lifecycle_configuration(Bucket=name)["Rules"]
        except s3.exceptions.ClientError:
            rules = []
        if not any(r.get("Expiration", {}).get("Days") == spec["expire_after_days"] for r in rules):
            problems.append(f"no lifecycle rule expiring objects after {spec['expire_after_days']} days")
    if spec.get("block_public_access"):
        try:
            pab = s3.get_public_access_block(Bucket=name)["PublicAccessBlockConfiguration"]
        except s3.exceptions.ClientError:
            pab = {}
        if not all(pab.get(k) for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                        "RestrictPublicBuckets")):
            problems.append("public access is not fully blocked")
    if spec.get("encryption"):
        try:
            rules = s3.get_bucket_encryption(Bucket=name)["ServerSideEncryptionConfiguration"]["Rules"]
        except s3.exceptions.ClientError:
            rules = []
        if not any(r["ApplyServerSideEncryptionByDefault"]["SSEAlgorithm"] == spec["encryption"] for r in rules):
            problems.append(f"default encryption is not {spec['encryption']}")
    return [f"bucket {logical} ({name}): {p}" for p in problems]


def main():
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)  # `... --list | head` ends quietly
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="only check; exit 1 on a difference")
    mode.add_argument("--env", action="store_true", help="print export lines for the names")
    mode.add_argument("--list", action="store_true", help="list the tables and buckets at the endpoint")
    p.add_argument("--definition", default=DEFINITION, help="path of tables.json")
    args = p.parse_args()
    try:
        d = load_definition(args.definition)
    except (OSError, ValueError, DefinitionError) as e:
        sys.exit(f"bootstrap: {e}")

    if args.env:
        print("\n".join(env_lines(d)))
        return

    ddb, s3, endpoint = clients()
    if args.list:
        for name in ddb.list_tables().get("TableNames", []):
            print(f"table  {name}")
        for b in s3.list_buckets().get("Buckets", []):
            print(f"bucket {b['Name']}")
        return

    if args.check:
        problems = []
        for logical, spec in d["tables"].items():
            table = describe(ddb, physical_name(spec))
            if table is None:
                problems.append(f"table {logical} ({physical_name(spec)}) does not exist")
            else:
                problems += table_problems(ddb, logical, spec, table)
        for logical, spec in d["buckets"].items():
            problems += bucket_problems(s3, logical, spec)
        if problems:
            print("bootstrap --check: differences at " + endpoint + ":\n  " + "\n  ".join(problems),
                  file=sys.stderr)
            sys.exit(1)
        print(f"bootstrap --check: {len(d['tables'])} tables and {len(d['buckets'])} bucket(s) "
              f"match infra/tables.json at {endpoint}")
        return

    for logical, spec in d["tables"].items():
        name, created = ensure_table(ddb, logical, spec, d["billing_mode"])
        print(f"table  {name:<28} {'created' if created else 'exists'}"
              + (f", TTL on {spec['ttl_attribute']}" if spec.get("ttl_attribute") else ""))
    for logical, spec in d["buckets"].items():
        name, created = ensure_bucket(s3, logical, spec)
        print(f"bucket {name:<28} {'created' if created else 'exists'}, "
              f"expiry {spec.get('expire_after_days')} days, public access blocked, SSE {spec.get('encryption')}")
    print(f"bootstrap: done at {endpoint}")


if __name__ == "__main__":
    main()
