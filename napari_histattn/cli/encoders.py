"""``histattn encoders`` lists the patch encoders; ``histattn convert-weights`` converts a pickle once.

Pretrained encoder weights are files you download yourself (the list says from
where, and under which terms); napari-histattn never downloads them. Give them to
``histattn features`` / ``train`` with ``--encoder NAME --encoder-weights PATH``
(a ``.safetensors`` file or a folder holding one, such as a Hugging Face
snapshot), or put them in a folder named by ``$HISTATTN_ENCODER_WEIGHTS``
(``<name>.safetensors``). A pickled ``.bin``/``.pth`` is converted once with
``convert-weights``, which reads tensors only (``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from napari_histattn.cli._parsers import add_command


def register(subparsers: Any) -> None:
    """Add the ``encoders`` and ``convert-weights`` subcommands."""
    parser = add_command(
        subparsers, "encoders", "list the patch encoders, their widths and weights", __doc__
    )
    parser.set_defaults(func=run_list)
    convert = add_command(
        subparsers,
        "convert-weights",
        "convert a pickled .bin/.pth state dict to .safetensors (tensors only)",
        __doc__,
    )
    convert.add_argument("source", type=Path, metavar="IN", help="a .bin/.pth state dict")
    convert.add_argument("target", type=Path, metavar="OUT", help="the .safetensors to write")
    convert.set_defaults(func=run_convert)


def describe_encoders() -> str:
    """The text ``histattn encoders`` prints."""
    from napari_histattn.models.encoders.specs import ENCODERS

    lines = []
    for name in sorted(ENCODERS):
        spec = ENCODERS[name]
        mpp = "any mpp" if spec.target_mpp is None else f"{spec.target_mpp:g} um/px"
        lines.append(f"{name}: {spec.dim}-d, {spec.input_size} px at {mpp}")
        lines.append(f"  weights: {spec.source or 'none (trained here)'}")
    return "\n".join(lines)


def run_list(args: argparse.Namespace) -> int:
    print(describe_encoders())
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from napari_histattn.models.encoders import convert_to_safetensors

    print(
        f"warning: reading {args.source} with torch.load(weights_only=True): tensors only; "
        "convert only files from a source you trust",
        file=sys.stderr,
    )
    out = convert_to_safetensors(args.source, args.target)
    print(f"wrote {out}")
    return 0
