"""Peer baseline for the PSI benchmark: SecretFlow's PSI (``spu.psi``) on the same ids.

Run by ``cases_psi`` with the interpreter named in ``TS_BENCH_SPU_PYTHON`` (a separate virtual
environment with ``spu`` installed; never a dependency of the product)::

    python psi_peer_spu.py PROTOCOL RECEIVER.csv SENDER.csv OUT_DIR

Both parties run in this process over SPU's in-memory link (two threads), as the kernel figure
of our own PSI runs both parties in one process. Prints one JSON line: protocol, seconds,
intersection size.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path


def main() -> None:
    import spu.libspu.link as link  # type: ignore[import-not-found]
    import spu.psi as psi  # type: ignore[import-not-found]

    protocol, receiver_csv, sender_csv, out_dir = sys.argv[1:5]
    desc = link.Desc()
    desc.add_party("alice", "127.0.0.1:0")
    desc.add_party("bob", "127.0.0.1:0")
    inputs = [receiver_csv, sender_csv]
    outputs = [str(Path(out_dir) / f"out{rank}.csv") for rank in range(2)]
    reports: list[object] = [None, None]

    def party(rank: int, lctx: object) -> None:
        config = psi.PsiExecuteConfig(
            protocol_conf=psi.PsiProtocolConfig(
                protocol=psi.parse_protocol(protocol),
                receiver_rank=0,
                broadcast_result=False,
            ),
            input_params=psi.InputParams(path=inputs[rank], selected_keys=["id"], keys_unique=True),
            output_params=psi.OutputParams(path=outputs[rank], disable_alignment=True),
        )
        reports[rank] = psi.psi_execute(config, lctx)

    contexts = [link.create_mem(desc, rank) for rank in range(2)]
    start = time.perf_counter()
    threads = [threading.Thread(target=party, args=(r, contexts[r])) for r in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    with open(outputs[0]) as fh:
        matched = sum(1 for _ in fh) - 1
    print(json.dumps({"protocol": protocol, "seconds": round(seconds, 3), "matched": matched}))


if __name__ == "__main__":
    main()
