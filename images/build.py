"""Build the images and write their references to components/images.json, the one place that names them.

    python images/build.py [--registry ghcr.io/photogenic] [--tag TAG] [--only NAME ...] [--push]
        [--engine docker|podman|buildah] [--base-image REF] [--torch-spec SPEC] [--no-build]
    python images/build.py --local [--base-image REF] [--torch-spec SPEC]

`--local` builds the CPU image as `localhost/photogenic:local` for `photogenic run --containers` and
leaves components/images.json alone (the tags the compiled pipeline names).

components/images.json is written *before* the builds, because the images carry it (the training
launcher and every component read their image names from it), and put back as it was when a build
fails. With --push, the pushed digest is recorded too (`name:tag@sha256:...`), so the pipeline, the jobs
and the manifests run exactly the bytes that were pushed.

Builds with the first container engine that works here: a Docker daemon, else podman, else buildah
(neither needs a daemon). Without any (or with --no-build) it only writes the tags, so the compiled
pipeline can name images that CI builds elsewhere. Run `make manifests` afterwards: the compiled
pipeline and the manifests name the images.

Behind a package mirror or a TLS-inspecting proxy, podman and buildah builds use this machine's pip
settings (their environment variables, else pip's config files): PIP_INDEX_URL goes in as a build
argument, the CA bundle pip uses (PIP_CERT, else the system's) is mounted over the image's, and a
PIP_FIND_LINKS folder (wheels on disk) is mounted read-only; a CPU build of
PyTorch among those wheels is the one the CPU image installs, unless --torch-spec says otherwise.
Docker builds cannot mount at build time and use PyPI and the PyTorch index as they are.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from photogenic.components.images import IMAGE_NAMES as IMAGES
from photogenic.pipelines.containers import LOCAL_IMAGE

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("docker", "podman", "buildah")
# The build argument that names each image's base.
BASE_ARGS = {"photogenic": "PYTHON_IMAGE", "photogenic-train": "DEVEL_IMAGE"}
_WHEELS_IN_BUILD = "/wheels"
_CA_IN_BUILD = "/etc/ssl/certs/ca-certificates.crt"


def _git(*args: str) -> str:
    out = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
    return out.stdout.strip() if out.returncode == 0 else ""


def default_tag() -> str:
    from importlib.metadata import version

    commit = _git("rev-parse", "--short=12", "HEAD")
    return f"{version('photogenic')}-{commit}" if commit else version("photogenic")


def engine_works(engine: str) -> bool:
    """Docker needs its daemon to answer; podman and buildah run without one."""
    if shutil.which(engine) is None:
        return False
    probe = [engine, "info"] if engine != "buildah" else [engine, "version"]
    return subprocess.run(probe, capture_output=True, check=False).returncode == 0


def find_engine(wanted: str | None = None) -> str | None:
    if wanted:
        if not engine_works(wanted):
            raise SystemExit(f"--engine {wanted}: not installed here, or (docker) no daemon answers")
        return wanted
    return next((e for e in ENGINES if engine_works(e)), None)


@dataclass(frozen=True)
class PipSettings:
    """This machine's pip settings, carried into podman and buildah builds."""

    index_url: str | None
    ca_bundle: Path | None
    wheels: Path | None

    @classmethod
    def from_env(cls) -> PipSettings:
        """From pip's environment variables, else pip's configuration files (`pip config`); the CA bundle
        falls back to the system's."""
        cert = _pip_setting("PIP_CERT", "global.cert") or os.environ.get("SSL_CERT_FILE") or _system_ca_bundle()
        links = [Path(x) for x in (_pip_setting("PIP_FIND_LINKS", "global.find-links") or "").split()]
        return cls(
            index_url=_pip_setting("PIP_INDEX_URL", "global.index-url"),
            ca_bundle=Path(cert) if cert and Path(cert).is_file() else None,
            wheels=next((p for p in links if p.is_dir()), None),
        )

    def torch_on_disk(self) -> str | None:
        """`torch==V` for the newest CPU build of PyTorch among the wheels on disk, if any."""
        if self.wheels is None:
            return None
        from packaging.version import Version

        versions = [Version(p.name.split("-")[1].split("+")[0]) for p in self.wheels.glob("torch-*+cpu-*.whl")]
        return f"torch=={max(versions)}" if versions else None

    def build_flags(self) -> list[str]:
        flags = []
        if self.index_url:
            flags += ["--build-arg", f"PIP_INDEX_URL={self.index_url}"]
        if self.ca_bundle:
            flags += ["-v", f"{self.ca_bundle}:{_CA_IN_BUILD}:ro", "--build-arg", f"PIP_CERT={_CA_IN_BUILD}"]
        if self.wheels:
            flags += ["-v", f"{self.wheels}:{_WHEELS_IN_BUILD}:ro", "--build-arg", f"PIP_FIND_LINKS={_WHEELS_IN_BUILD}"]
        return flags


def _system_ca_bundle() -> str | None:
    """The CA bundle this machine trusts (behind a TLS-inspecting proxy it holds the proxy's CA)."""
    import ssl

    paths = ssl.get_default_verify_paths()
    return next((f for f in (paths.cafile, paths.openssl_cafile) if f and Path(f).is_file()), None)


def _pip_setting(env: str, key: str) -> str | None:
    if os.environ.get(env):
        return os.environ[env]
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", key], capture_output=True, text=True, check=False
    )
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def build_command(
    engine: str, name: str, ref: str, commit: str, base: str | None, torch_spec: str | None, pip: PipSettings
) -> list[str]:
    """The build command of one image, run from the repository root."""
    verb = ["buildah", "build"] if engine == "buildah" else [engine, "build"]
    cmd = [*verb, "-f", f"images/{name}/Dockerfile", "--build-arg", f"GIT_COMMIT={commit}", "-t", ref]
    if base:
        cmd += ["--build-arg", f"{BASE_ARGS[name]}={base}"]
    if torch_spec and name == "photogenic":
        cmd += ["--build-arg", f"TORCH_SPEC={torch_spec}"]
    if engine != "docker":
        cmd += ["--layers"] if engine == "buildah" else []
        cmd += pip.build_flags()
    return [*cmd, "."]


def image_size(engine: str, ref: str) -> int | None:
    inspect = ["buildah", "inspect", "--type", "image"] if engine == "buildah" else [engine, "image", "inspect"]
    out = subprocess.run([*inspect, ref], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        return None
    info = json.loads(out.stdout)
    info = info[0] if isinstance(info, list) else info
    return info.get("Size") or info.get("size")


IMAGES_JSON = ROOT / "components" / "images.json"


def write_refs(refs: dict[str, str]) -> str:
    """Write `refs` into components/images.json (its pull secrets kept); returns the file's old text."""
    old = IMAGES_JSON.read_text()
    data = json.loads(old)
    data["images"] = {**data.get("images", {}), **refs}
    IMAGES_JSON.write_text(json.dumps(data, indent=2) + "\n")
    return old


def pushed_digest(engine: str, ref: str, digest_file: Path) -> str | None:
    """The registry digest of `ref` after a push (podman and buildah write it to `--digestfile`)."""
    if digest_file.is_file() and digest_file.read_text().strip().startswith("sha256:"):
        return digest_file.read_text().strip()
    if engine == "docker":
        out = subprocess.run(
            ["docker", "image", "inspect", "--format", "{{json .RepoDigests}}", ref],
            capture_output=True,
            text=True,
            check=False,
        )
        name = ref.rsplit(":", 1)[0]
        for repo_digest in json.loads(out.stdout or "[]") if out.returncode == 0 else []:
            if repo_digest.startswith(f"{name}@"):
                return repo_digest.split("@", 1)[1]
    return None


def push(engine: str, ref: str) -> str:
    """Push `ref`; returns `ref@sha256:...` (or `ref` where the engine reports no digest)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        digest_file = Path(tmp, "digest")
        cmd = [engine, "push", ref] if engine == "docker" else [engine, "push", "--digestfile", str(digest_file), ref]
        subprocess.run(cmd, check=True)
        digest = pushed_digest(engine, ref, digest_file)
    return f"{ref}@{digest}" if digest else ref


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registry", default="ghcr.io/photogenic")
    parser.add_argument("--tag", default=None)
    parser.add_argument("--only", nargs="+", choices=IMAGES, help="build these images only (all get tags)")
    parser.add_argument("--engine", choices=ENGINES, default=None)
    parser.add_argument("--base-image", default=None, help="the CPU image's base (`make base-image` makes one)")
    parser.add_argument("--torch-spec", default=None, help="what the CPU image pip-installs for PyTorch")
    parser.add_argument("--push", action="store_true")
    parser.add_argument("--no-build", action="store_true")
    parser.add_argument("--local", action="store_true", help=f"build {LOCAL_IMAGE} only; write no tags")
    args = parser.parse_args(argv)
    tag = args.tag or default_tag()
    refs = {name: f"{args.registry}/{name}:{tag}" for name in IMAGES}
    if args.local:
        refs, args.only, args.push = {"photogenic": LOCAL_IMAGE}, ["photogenic"], False
    # Before the builds: the images carry components/images.json and must name themselves.
    old = None if args.local else write_refs(refs)
    if not args.no_build:
        engine = find_engine(args.engine)
        if engine is None:
            print(
                "no container engine here (a Docker daemon, podman or buildah): writing the tags only",
                file=sys.stderr,
            )
        else:
            commit = _git("rev-parse", "HEAD") or "unknown"
            pip = PipSettings.from_env()
            torch_spec = args.torch_spec or (pip.torch_on_disk() if engine != "docker" else None)
            failed = []
            for name in args.only or IMAGES:
                base = args.base_image if name == "photogenic" else None
                cmd = build_command(engine, name, refs[name], commit, base, torch_spec, pip)
                print("+", " ".join(cmd), file=sys.stderr, flush=True)
                t0 = time.perf_counter()
                if subprocess.run(cmd, cwd=ROOT, check=False).returncode != 0:
                    failed.append(name)
                    continue
                size = image_size(engine, refs[name])
                weighs = f", {size / 1e9:.2f} GB" if size else ""
                print(f"built {refs[name]} in {time.perf_counter() - t0:.0f} s{weighs}", file=sys.stderr)
            if failed:
                if old is not None:
                    IMAGES_JSON.write_text(old)
                print(
                    f"not built: {', '.join(failed)} (see the build output above; the training image's CUDA base "
                    "comes from Docker Hub). components/images.json is unchanged.",
                    file=sys.stderr,
                )
                return 1
            if args.push:
                # After every build, so a failed build leaves nothing half-published.
                refs.update({name: push(engine, refs[name]) for name in args.only or IMAGES})
                write_refs(refs)
    print(json.dumps(refs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
