"""moto_server, with its DynamoDB requests handled one at a time, and cheap transactions and
queries.

Three changes to moto 5.2's DynamoDB, all made here so the local cloud behaves under load:

1. One lock around every DynamoDB request. moto's TransactWriteItems deep-copies the tables it
   touches (to roll back on a failed condition) without a lock, so a write arriving on another
   thread in the middle of the copy made it fail with `RuntimeError: dictionary changed size
   during iteration`, answered as an HTML 500 page the AWS SDK cannot read (the gateway then
   answered 503). S3 requests (large uploads) still run in parallel. moto is bound by Python's
   GIL anyway, so the lock costs little throughput.

2. TransactWriteItems keeps a journal of the items it names instead of copying whole tables.
   moto copies every table a transaction touches before applying it, so each transaction costs
   time and memory in proportion to the table (a prekeys table of 10,000 items is copied for
   every registration): the test suites slowed as tables grew, and setting up 100 devices for the
   load generator drove moto past 16 GB. Here the items a transaction names are copied before it
   runs and put back if it fails; moto's own table copy is skipped (it gets the table itself, so
   its roll-back assigns each table to itself). A transaction changes only the items it names,
   so the journal restores everything a failed one changed. Under the lock of (1) no other
   request can see the items in between.

3. A Query on a table's key reads only its partition. moto sorts every item of the table and
   filters them for each Query, so counting a device's prekeys or reading its queue cost as much
   as the whole table (10,000 prekeys with 100 devices). Index queries are left to moto.
"""

import copy
import threading

from moto import server
from moto.dynamodb import models as _ddb
from moto.dynamodb.models.dynamo_type import DynamoType
from moto.dynamodb.models.table import Table

_dynamodb = threading.Lock()
_run_simple = server.run_simple


def _serialize_dynamodb(app):
    def handle(environ, start_response):
        if environ.get("HTTP_X_AMZ_TARGET", "").startswith("DynamoDB"):
            with _dynamodb:
                # The whole answer is produced under the lock.
                return list(app(environ, start_response))
        return app(environ, start_response)

    return handle


def _run_simple_serialized(host, port, app, **kwargs):
    return _run_simple(host, port, _serialize_dynamodb(app), **kwargs)


class _CopyWithoutTables:
    """Stands in for the `copy` module inside moto.dynamodb.models while a transaction runs:
    a Table is returned as it is, anything else is copied as usual."""

    active = False

    @classmethod
    def deepcopy(cls, obj, memo=None):
        if cls.active and isinstance(obj, Table):
            return obj
        return copy.deepcopy(obj, memo)

    copy = staticmethod(copy.copy)


def _named_item(backend, entry):
    """(table, hash, range) of the item a TransactItems entry names, or None when it names
    none that exists (moto then refuses the request before changing anything)."""
    if not isinstance(entry, dict) or len(entry) != 1:
        return None
    op_type, op = next(iter(entry.items()))
    if not isinstance(op, dict):
        return None
    table = backend.tables.get(op.get("TableName"))
    if table is None:
        return None
    attrs = op.get("Item") if op_type == "Put" else op.get("Key")
    if not isinstance(attrs, dict):
        return None
    try:
        hash_value = DynamoType(attrs[table.hash_key_attr])
        range_value = (
            DynamoType(attrs[table.range_key_attr]) if table.range_key_attr else None
        )
    except (KeyError, TypeError, AttributeError):
        return None
    return table, hash_value, range_value


def _restore(table, hash_value, range_value, saved):
    if range_value is not None:
        bucket = table.items[hash_value]
        if saved is None:
            bucket.pop(range_value, None)
            if not bucket:
                table.items.pop(hash_value, None)
        else:
            bucket[range_value] = saved
    elif saved is None:
        table.items.pop(hash_value, None)
    else:
        table.items[hash_value] = saved


_transact_write_items = _ddb.DynamoDBBackend.transact_write_items


def _transact_write_items_journaled(self, transact_items):
    journal = []
    seen = set()
    for entry in transact_items if isinstance(transact_items, list) else []:
        named = _named_item(self, entry)
        if named is None:
            continue
        table, hash_value, range_value = named
        mark = (id(table), hash_value, range_value)
        if mark in seen:
            continue  # moto refuses two operations on one item; the first copy is the original
        seen.add(mark)
        try:
            current = table.get_item(hash_value, range_value)
        except Exception:  # a key moto will refuse; nothing to keep
            continue
        journal.append((table, hash_value, range_value, copy.deepcopy(current)))
    _CopyWithoutTables.active = True
    try:
        return _transact_write_items(self, transact_items)
    except BaseException:
        for table, hash_value, range_value, saved in reversed(journal):
            _restore(table, hash_value, range_value, saved)
        raise
    finally:
        _CopyWithoutTables.active = False


_query = Table.query


def _query_one_partition(self, hash_key, *args, **kwargs):
    """moto's Table.query with a base-table query reading only its partition (moto sorts and
    filters every item of the table for each query)."""
    # moto passes the index name 8th: (hash_key, range_comparison, range_objs, limit,
    # exclusive_start_key, scan_index_forward, projection_expressions, index_name, ...).
    index_name = args[6] if len(args) > 6 else kwargs.get("index_name")
    if index_name is not None or hash_key is None:
        return _query(self, hash_key, *args, **kwargs)
    held = self.items.get(hash_key)
    if held is None:
        partition = []
    elif self.range_key_attr:
        partition = list(held.values())
    else:
        partition = [held]
    # Seen by this call only: requests are serialized by the lock above.
    self.all_items = lambda: partition
    try:
        return _query(self, hash_key, *args, **kwargs)
    finally:
        del self.all_items


server.run_simple = _run_simple_serialized
Table.query = _query_one_partition
_ddb.copy = _CopyWithoutTables
_ddb.DynamoDBBackend.transact_write_items = _transact_write_items_journaled

if __name__ == "__main__":
    server.main()
