"""`cnlb service apply FILE | set NAME field=value ... | delete NAME`: change the Services of
the detached cluster (testbed.emulation.services does the work in its owner process). The file
is read here, where its path means what the user meant; the owner checks it against the running
cluster and answers one line per problem (exit 2, nothing changed)."""

from __future__ import annotations

import json

from testbed.errors import UsageError


def cmd_service(args) -> int:
    from testbed.emulation.services import document_to_wire
    from testbed.emulation.session import request
    from testbed.spec.yamldoc import read_document
    if args.action == "apply":
        doc = read_document(args.file)    # once: /dev/stdin and <(...) cannot be read twice
        result = request("apply-service", document=document_to_wire(doc))
    elif args.action == "set":
        bad = [f for f in args.fields if "=" not in f or f.startswith("=")]
        if bad:
            raise UsageError(f"cnlb service set: '{bad[0]}' is not field=value — write it like "
                             "type=NodePort or sessionAffinity=ClientIP")
        result = request("set-service", service=args.name, fields=args.fields)
    else:
        result = request("delete-service", service=args.name)
    print(json.dumps(result))
    return 0
