"""Refresh the Kubeflow CRDs (and Trainer's torch runtime) the manifest tests validate against.

    python tests/data/crds/refresh.py                       # from GitHub (raw.githubusercontent.com)
    python tests/data/crds/refresh.py --git kubeflow/trainer=/path/to/clone ...   # from local clones

Each file is taken verbatim at a release tag and stored gzipped (the CRDs are 0.2-0.9 MB of YAML
each); `SOURCES.md` records repository, tag, path and sha256 of every file. Add a version to
`SOURCES` when we start supporting it, and drop one when we stop.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import subprocess
import sys
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent

# (repository, tag, path in the repository): the versions we support (docs/kubeflow.md, "Run on Kubeflow").
# Trainer before 2.2 has no `runtimePatches` (our TrainJob's pod settings); KFP's Pipeline and
# PipelineVersion before 2.14 have no `displayName`/`platformSpec` (the compiler writes both).
PYTORCHJOB = "manifests/base/crds/kubeflow.org_pytorchjobs.yaml"
TRAINJOB = "manifests/base/crds/trainer.kubeflow.org_trainjobs.yaml"
TORCH_RUNTIME = "manifests/base/runtimes/torch_distributed.yaml"
KFP_PIPELINE = "manifests/kustomize/base/crds/pipelines.kubeflow.org_pipelines.yaml"
KFP_VERSION = "manifests/kustomize/base/crds/pipelines.kubeflow.org_pipelineversions.yaml"
SOURCES: tuple[tuple[str, str, str], ...] = (
    *(("kubeflow/training-operator", tag, PYTORCHJOB) for tag in ("v1.7.0", "v1.8.1", "v1.9.0")),
    *(("kubeflow/trainer", tag, path) for tag in ("v2.2.1", "v2.3.0") for path in (TRAINJOB, TORCH_RUNTIME)),
    *(("kubeflow/pipelines", tag, path) for tag in ("2.14.0", "2.17.0") for path in (KFP_PIPELINE, KFP_VERSION)),
)
LICENSES = {"kubeflow/training-operator": "v1.9.0", "kubeflow/trainer": "v2.3.0", "kubeflow/pipelines": "2.17.0"}


def stored_name(repo: str, tag: str, path: str) -> str:
    """`trainer-v2.3.0-trainer.kubeflow.org_trainjobs.yaml.gz`"""
    return f"{repo.split('/')[1]}-{tag}-{Path(path).name}.gz"


def read(repo: str, tag: str, path: str, clones: dict[str, Path]) -> bytes:
    if repo in clones:
        return subprocess.run(
            ["git", "-C", str(clones[repo]), "show", f"{tag}:{path}"], capture_output=True, check=True
        ).stdout
    url = f"https://raw.githubusercontent.com/{repo}/{tag}/{path}"
    with urllib.request.urlopen(url, timeout=60) as response:  # noqa: S310 - a fixed https URL
        return response.read()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--git", action="append", default=[], metavar="OWNER/NAME=PATH", help="read from a clone")
    args = parser.parse_args(argv)
    clones = {k: Path(v) for k, v in (item.split("=", 1) for item in args.git)}
    for old in HERE.glob("*.gz"):
        old.unlink()
    lines = [
        "# Vendored Kubeflow CRDs",
        "",
        "Verbatim, gzipped, from the release tags below; `refresh.py` rewrites this folder. Licences:",
        "Apache-2.0, copied from each repository (`LICENSE-<repository>`).",
        "",
        "| file | repository | tag | path | sha256 (first 16 hex digits) |",
        "|---|---|---|---|---|",
    ]
    for repo, tag, path in SOURCES:
        data = read(repo, tag, path, clones)
        name = stored_name(repo, tag, path)
        (HERE / name).write_bytes(gzip.compress(data, mtime=0))
        lines.append(f"| `{name}` | {repo} | {tag} | `{path}` | `{hashlib.sha256(data).hexdigest()[:16]}` |")
    for repo, tag in LICENSES.items():
        (HERE / f"LICENSE-{repo.split('/')[1]}").write_bytes(read(repo, tag, "LICENSE", clones))
    (HERE / "SOURCES.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {len(SOURCES)} files to {HERE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
