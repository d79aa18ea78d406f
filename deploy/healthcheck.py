"""The image's HEALTHCHECK: GET a URL (default: this process's /healthz) and exit 0 if it answers.

Usage: python healthcheck.py [URL]. Without a URL, checks http://127.0.0.1:$IMAGINEBOT_METRICS_PORT/healthz.
A URL given explicitly (the dashboard's page) is healthy on any answer below 500.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    explicit = len(argv) > 1
    url = argv[1] if explicit else f"http://127.0.0.1:{os.environ.get('IMAGINEBOT_METRICS_PORT', '9464')}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        return 0 if explicit and exc.code < 500 else 1
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
