"""`photogenic config`, `store` and `world`: look at the config, the store and the toy world."""

from __future__ import annotations

import sys

import click
import yaml

from photogenic.cli.base import config_options, friendly_errors, main
from photogenic.config import PRESETS, Config, field_docs, to_dict
from photogenic.storage import open_store, split_parent

# --------------------------------------------------------------------------------------------- config


@main.group("config")
def config_group() -> None:
    """Inspect the configuration."""


@config_group.command("show")
@click.option("--docs", is_flag=True, help="Print each key's one-line doc beside its value.")
@config_options
def config_show(config: Config, docs: bool) -> None:
    """Print the resolved config as YAML, with its fingerprint."""
    if docs:
        flat_docs = field_docs()
        from photogenic.config import flatten

        for key, value in flatten(to_dict(config)).items():
            click.echo(f"{key} = {value!r}\n    {flat_docs.get(key, '')}")
    else:
        click.echo(yaml.safe_dump(to_dict(config), sort_keys=False).rstrip())
    click.echo(f"# fingerprint: {config.fingerprint()}")


@config_group.command("presets")
def config_presets() -> None:
    """List the named presets."""
    for name, fn in PRESETS.items():
        click.echo(f"{name:8s} {(fn.__doc__ or '').strip()}")


# --------------------------------------------------------------------------------------------- store


@main.group("store")
def store_group() -> None:
    """Inspect data in any store URI (a local path or s3://bucket/prefix).

    S3 endpoint and credentials come from the standard AWS variables
    (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_PROFILE).
    """


@store_group.command("ls")
@click.argument("uri")
@click.option("-l", "--long", "long_", is_flag=True, help="Show size and recorded sha256 too.")
@friendly_errors
def store_ls(uri: str, long_: bool) -> None:
    """List the objects under URI, recursively."""
    store = open_store(uri)
    count = total = 0
    for info in store.list():
        count, total = count + 1, total + info.size
        if long_:
            sha = info.sha256 or (store.stat(info.key).sha256 if store.root.startswith("s3://") else None)
            click.echo(f"{info.size:>12d}  {sha or '-':64s}  {info.uri}")
        else:
            click.echo(info.uri)
    click.echo(f"# {count} objects, {total} bytes", err=True)


@store_group.command("cat")
@click.argument("uri")
@friendly_errors
def store_cat(uri: str) -> None:
    """Write one object to standard output (its checksum is verified)."""
    parent, name = split_parent(uri)
    with open_store(parent).open(name) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            sys.stdout.buffer.write(chunk)


@store_group.command("get")
@click.argument("uri")
@click.argument("dest", type=click.Path())
@friendly_errors
def store_get(uri: str, dest: str) -> None:
    """Download one object to DEST (checksum verified before it appears)."""
    parent, name = split_parent(uri)
    path = open_store(parent).get_file(name, dest)
    click.echo(str(path))


@store_group.command("put")
@click.argument("src", type=click.Path(exists=True, dir_okay=False))
@click.argument("uri")
@friendly_errors
def store_put(src: str, uri: str) -> None:
    """Upload the file SRC to URI, recording its sha256."""
    parent, name = split_parent(uri)
    info = open_store(parent).put_file(name, src)
    click.echo(f"{info.uri}  {info.size} bytes  sha256 {info.sha256}")


@store_group.command("mb")
@click.argument("uri")
@friendly_errors
def store_mb(uri: str) -> None:
    """Create the bucket of an s3:// URI if it does not exist (safe to repeat)."""
    from photogenic.s3store import S3Store

    store = open_store(uri)
    if not isinstance(store, S3Store):
        raise click.BadParameter(f"{uri!r} is not an s3:// URI", param_hint="URI")
    created = store.make_bucket()
    click.echo(f"s3://{store.bucket}: {'created' if created else 'exists already'} at {store.endpoint}")


# --------------------------------------------------------------------------------------------- world


@main.group("world")
def world_group() -> None:
    """The generated toy world (the default data: no download needed)."""


@world_group.command("sheet")
@click.option("--out", "-o", default="world-sheet.png", type=click.Path(dir_okay=False), help="PNG file to write.")
@click.option("--columns", default=8, type=click.IntRange(1, 32), help="Samples per row.")
@config_options
def world_sheet(config: Config, out: str, columns: int) -> None:
    """Write a contact sheet: random haystack samples above the most photogenic ones."""
    from photogenic.world import contact_sheet

    contact_sheet(config.world, columns=columns).save(out)
    click.echo(out)
