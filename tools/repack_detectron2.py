"""Turn an unpacked ``sal-detectron2`` CPython-3.10 wheel into a pure-Python ``detectron2`` wheel.

Called by ``tools/setup_env.sh``. The fork's Python code is upstream Detectron2; its compiled
``_C`` extension is built for 3.10 and is imported lazily upstream, so dropping it leaves a
package that works on 3.11 for everything except compiled ops (rotated boxes, deformable conv,
fast COCO eval). The distribution is renamed to ``detectron2`` so ``pip`` sees it by that name.
"""
import re
import shutil
import sys
from pathlib import Path

NEW_NAME = "detectron2"
EXTRA_REQUIRES = ["fvcore>=0.1.5,<0.1.6", "iopath>=0.1.7,<0.1.10"]


def repack(root: Path) -> None:
    dist_infos = list(root.glob("*.dist-info"))
    if len(dist_infos) != 1:
        raise SystemExit(f"expected one .dist-info folder in {root}, found {dist_infos}")
    info = dist_infos[0]
    version = info.name[: -len(".dist-info")].split("-", 1)[1]

    for so in (root / "detectron2").glob("_C*.so"):
        so.unlink()
    if (root / "tools").is_dir():
        shutil.rmtree(root / "tools")
    (info / "top_level.txt").write_text("detectron2\n")

    wheel = (info / "WHEEL").read_text()
    wheel = re.sub(r"Root-Is-Purelib: \w+", "Root-Is-Purelib: true", wheel)
    wheel = re.sub(r"(?m)^Tag: .*\n", "", wheel).rstrip("\n") + "\nTag: py3-none-any\n"
    (info / "WHEEL").write_text(wheel)

    meta = (info / "METADATA").read_text()
    meta = re.sub(r"(?m)^Name: .*$", f"Name: {NEW_NAME}", meta)
    meta = re.sub(r"(?m)^(Requires-Dist: numpy)\s*[<>=!~][^;\n]*", r"\1", meta)
    meta = re.sub(r"(?m)^Requires-Dist: (fvcore|iopath)\b.*\n", "", meta)
    head, sep, body = meta.partition("\n\n")
    head += "".join(f"\nRequires-Dist: {r}" for r in EXTRA_REQUIRES)
    (info / "METADATA").write_text(head + sep + body)

    # RECORD lists the deleted files with hashes; `wheel pack` regenerates it.
    (info / "RECORD").unlink(missing_ok=True)
    new_info = root / f"{NEW_NAME}-{version}.dist-info"
    info.rename(new_info)
    # `wheel pack` names the output after the folder: <name>-<version>
    root.rename(root.parent / f"{NEW_NAME}-{version}")


if __name__ == "__main__":
    repack(Path(sys.argv[1]))
