"""Resolves Switchboard items as OpenFeature object flags through a sidecar, with the official
OpenFeature Python SDK and its OFREP provider: what tests/tests/openfeature.rs checks.

Usage: openfeature_client.py BASE_URL CONSUMER=FLAG_KEY...
Prints one JSON list, an entry per CONSUMER=FLAG_KEY.
"""

import json
import sys

from openfeature import api
from openfeature.contrib.provider.ofrep import OFREPProvider
from openfeature.evaluation_context import EvaluationContext


def text(value):
    """An enum's value (reasons and error codes are enums), or the value itself."""
    return getattr(value, "value", value)


def main():
    base_url, requests = sys.argv[1], sys.argv[2:]
    api.set_provider(OFREPProvider(base_url=base_url))
    client = api.get_client()
    results = []
    for request in requests:
        consumer, key = request.split("=", 1)
        details = client.get_object_details(
            key, {"default": True}, EvaluationContext(targeting_key=consumer)
        )
        results.append(
            {
                "consumer": consumer,
                "key": key,
                "value": details.value,
                "variant": details.variant,
                "reason": text(details.reason),
                "error_code": text(details.error_code),
                "metadata": dict(details.flag_metadata or {}),
            }
        )
    print(json.dumps(results))


if __name__ == "__main__":
    main()
