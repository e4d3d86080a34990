"""The Photogenic pipeline: its definition, the compiled YAML, and the code that compiles, uploads and
runs it (on a cluster, or on this machine through `kfp.local`). Installed as `photogenic.pipelines`."""
