"""Build the images and write their tags to components/images.json, the one place components read them.

    python images/build.py [--registry ghcr.io/photogenic] [--tag TAG] [--push] [--no-build]

Builds with Docker where a daemon answers; without one (or with --no-build) it only writes the tags,
so the compiled pipeline can name images that CI builds elsewhere. Run `make manifests` afterwards:
the compiled pipeline names the images.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ("photogenic", "photogenic-train")


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def default_tag() -> str:
    from importlib.metadata import version

    commit = _git("rev-parse", "--short=12", "HEAD")
    return f"{version('photogenic')}-{commit}" if commit else version("photogenic")


def docker_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="ghcr.io/photogenic")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--push", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    args = parser.parse_args(argv)
    tag = args.tag or default_tag()
    refs = {name: f"{args.registry}/{name}:{tag}" for name in IMAGES}
    if not args.no_build:
        if not docker_available():
            print("no Docker daemon here: writing the tags only (build the images where one runs)", file=sys.stderr)
        else:
            commit = _git("rev-parse", "HEAD") or "unknown"
            for name, ref in refs.items():
                cmd = ["docker", "build", "-f", f"images/{name}/Dockerfile", "--build-arg", f"GIT_COMMIT={commit}"]
                subprocess.run([*cmd, "-t", ref, "."], cwd=ROOT, check=True)
                if args.push:
                    subprocess.run(["docker", "push", ref], check=True)
    (ROOT / "components" / "images.json").write_text(json.dumps(refs, indent=2) + "\n")
    print(json.dumps(refs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
