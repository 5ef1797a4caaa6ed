"""The original validator's download (RaoFoundation/pretraining, seed era,
model/storage/hugging_face/hugging_face_model_store.py `download_model`),
against the hub at HF_ENDPOINT: the size check over `model_info(...).siblings`,
`AutoModelForCausalLM.from_pretrained(repo, revision=commit, cache_dir=...,
use_safetensors=True)`, symlinks realized, then `get_hash_of_directory` of the
snapshot (model/storage/disk/utils.py). Prints one JSON line: the snapshot's
files, their total size, the repo's listed size and the hash.

Usage: original_download.py REPO_ID COMMIT CACHE_DIR. Exit status 3: torch or
transformers is missing.
"""

import base64
import hashlib
import json
import os
import shutil
import sys

try:
    from huggingface_hub import HfApi
    from transformers import AutoModelForCausalLM
    import transformers
except ImportError as e:  # the caller reports it as "needs ..."
    print(f"missing: {e}", file=sys.stderr)
    sys.exit(3)


def get_hash_of_file(path):
    blocksize = 64 * 1024
    file_hash = hashlib.sha256()
    with open(path, "rb") as fp:
        while True:
            data = fp.read(blocksize)
            if not data:
                break
            file_hash.update(data)
    return base64.b64encode(file_hash.digest()).decode("utf-8")


def get_hash_of_directory(path):
    dir_hash = hashlib.sha256()
    for cur_path, dirnames, filenames in os.walk(path):
        dirnames.sort()
        for filename in sorted(filenames):
            file_hash = get_hash_of_file(os.path.join(cur_path, filename))
            dir_hash.update(file_hash.encode())
    return base64.b64encode(dir_hash.digest()).decode("utf-8")


def realize_symlinks_in_directory(path):
    for cur_path, dirnames, filenames in os.walk(path):
        for filename in filenames:
            src = os.path.abspath(os.path.join(cur_path, filename))
            dst = os.path.realpath(src)
            if src != dst:
                shutil.move(dst, src)


def main():
    repo_id, commit, cache_dir = sys.argv[1:4]
    info = HfApi().model_info(repo_id=repo_id, revision=commit, timeout=10, files_metadata=True)
    listed = sum(f.size for f in info.siblings)
    AutoModelForCausalLM.from_pretrained(
        pretrained_model_name_or_path=repo_id,
        revision=commit,
        cache_dir=cache_dir,
        use_safetensors=True,
    )
    ns, name = repo_id.split("/")
    snapshot = os.path.join(cache_dir, f"models--{ns}--{name}", "snapshots", commit)
    realize_symlinks_in_directory(snapshot)
    files = []
    size = 0
    for cur_path, _, filenames in os.walk(snapshot):
        for f in filenames:
            p = os.path.join(cur_path, f)
            files.append(os.path.relpath(p, snapshot))
            size += os.path.getsize(p)
    print(json.dumps({
        "transformers": transformers.__version__,
        "files": sorted(files),
        "size": size,
        "listed_size": listed,
        "hash": get_hash_of_directory(snapshot),
    }))


if __name__ == "__main__":
    main()
