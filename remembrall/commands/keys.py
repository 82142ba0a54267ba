"""``remembrall keys``: CURVE key pairs for stages that talk across hosts.

``remembrall keys generate DIR NAME...`` writes ``DIR/NAME.key`` (public: copy it to the peers)
and ``DIR/NAME.key_secret`` (mode 0600: it stays on its host, or in a Kubernetes Secret).
``remembrall keys show FILE`` prints a certificate's public key (Z85), to compare by eye.
"""

from __future__ import annotations

import argparse
import sys

from remembrall.io.curve import CurveKeyError, generate_keys, load_keys


def keys_main(args: argparse.Namespace) -> int:
    try:
        if args.keys_verb == "generate":
            for name in args.names:
                public, secret = generate_keys(args.directory, name)
                print(f"{name}: public {public}  secret {secret}")
            print("give a server its NAME.key_secret and, in its serve.allowed_keys folder, each client's NAME.key; "
                  "give a client its NAME.key_secret and the server's NAME.key")
        else:
            print(load_keys(args.file, secret=False).public.decode("ascii"))
    except CurveKeyError as exc:
        print(f"remembrall keys: {exc}", file=sys.stderr)
        return 2
    return 0
