#!/usr/bin/env python3
"""An S3-compatible server on 127.0.0.1 for diffsql's tests and benchmarks (moto's server, installed by
`.ci/run` with `pip install "moto[server]"`).

Usage: s3_server.py [--port N] BUCKET...   creates the buckets, prints the endpoint URL on one line, and
serves until its standard input closes (so it ends with the process that started it).
"""
import argparse
import logging
import sys

from moto.server import ThreadedMotoServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0, help="port (0: any free one)")
    parser.add_argument("buckets", nargs="*", help="buckets to create")
    args = parser.parse_args()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    if args.buckets:
        import boto3

        client = boto3.client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id="test",
            aws_secret_access_key="test",
            region_name="us-east-1",
        )
        for bucket in args.buckets:
            client.create_bucket(Bucket=bucket)
    print(endpoint, flush=True)
    try:
        sys.stdin.read()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
