"""moto_server, with its DynamoDB requests handled one at a time.

moto 5.2's TransactWriteItems deep-copies the tables it touches (to roll back on a failed
condition) without a lock, so a write arriving on another thread in the middle of the copy
makes it fail with `RuntimeError: dictionary changed size during iteration`, answered as an HTML
500 page that the AWS SDK cannot read (the gateway then answers 503). Under concurrent load
(the test suites, the load generator) that happened every few hundred transactions. This
wrapper runs moto's own server (same arguments as `moto_server`) and holds one lock around
every DynamoDB request; S3 requests (large uploads) still run in parallel. moto is bound by
Python's GIL anyway, so the lock costs little throughput.
"""

import threading

from moto import server

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


server.run_simple = _run_simple_serialized

if __name__ == "__main__":
    server.main()
