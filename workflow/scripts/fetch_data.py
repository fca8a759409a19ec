"""Stage data / fetch: the pinned POPE file, the COCO 2017 annotations and single COCO images, over HTTP.

Every download goes to a temporary file next to its destination and is renamed into place only when complete
(and, where a checksum is pinned, verified), so an interrupted or failed fetch never leaves a usable-looking file.
"""

import http.client
import shutil
import time
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from pipeline_io import PipelineError, atomic_path, log, params_config, run_main, sha256_file

RETRIES = 4
TIMEOUT_S = 60
ANNOTATION_FILES = ("instances_val2017.json", "captions_val2017.json")


def http_get(url: str, dest: str | Path, sha256: str | None = None, retries: int = RETRIES,
             timeout: float = TIMEOUT_S) -> Path:
    """Download ``url`` to ``dest`` atomically, retrying network errors and 5xx with exponential backoff."""
    dest = Path(dest)
    for attempt in range(retries + 1):
        try:
            with atomic_path(dest) as tmp:
                with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as f:
                    shutil.copyfileobj(response, f, 1 << 20)
                if sha256 and (got := sha256_file(tmp)) != sha256:
                    raise PipelineError(f"{url}: sha256 {got} differs from the pinned {sha256}; the file was not "
                                        f"kept. Check data.pope.url/sha256 (a different commit?) and fetch again")
            return dest
        except urllib.error.HTTPError as err:
            if err.code < 500 and err.code != 429:
                raise PipelineError(f"{url}: HTTP {err.code} {err.reason}; check the URL in the config") from err
            problem = f"HTTP {err.code}"
        except (urllib.error.URLError, TimeoutError, ConnectionError, http.client.IncompleteRead) as err:
            problem = str(getattr(err, "reason", err))
        if attempt < retries:
            wait = 2.0 ** attempt
            log.warning("%s: %s, retrying in %.0f s (%d/%d)", url, problem, wait, attempt + 1, retries)
            time.sleep(wait)
    raise PipelineError(f"{url}: failed after {retries + 1} tries ({problem}); check the network or download "
                        f"it by hand to {dest}")


def network_settings(snakemake) -> dict:
    """``data.coco.download`` and ``image_url``, read from the run's config rather than from params: they decide
    only how a missing file is obtained, never its content, so editing them must not rerun any job."""
    coco = snakemake.config["data"]["coco"]
    return {"download": bool(coco.get("download")), "image_url": coco.get("image_url")}


def fetch_pope(url: str | None, sha256: str | None, dest: str | Path, download: bool = True) -> None:
    if not url:
        raise PipelineError(f"data.pope.file '{dest}' is missing and data.pope.url is not set: download "
                            "output/coco/coco_pope_adversarial.json from the POPE repository (AoiDragon/POPE) "
                            f"to {dest}, or set data.pope.url")
    if not download:
        pinned = f" (sha256 {sha256})" if sha256 else ""
        raise PipelineError(f"data.pope.file '{dest}' is missing and data.coco.download is false: download {url} "
                            f"to {dest}{pinned}, or set data.coco.download: true")
    log.info("fetching POPE from %s", url)
    http_get(url, dest, sha256=sha256)
    log.info("POPE file %s verified (sha256 %s)", dest, sha256 or "not pinned")


def fetch_annotations(url: str | None, download: bool, annotations_dir: str | Path) -> None:
    """Fetch COCO's annotations zip and unpack the two val2017 files the pipeline reads."""
    annotations_dir = Path(annotations_dir)
    if not (download and url):
        raise PipelineError(
            f"COCO annotations missing in {annotations_dir}: download annotations_trainval2017.zip "
            f"({url or 'from the COCO website'}), unzip {' and '.join(ANNOTATION_FILES)} into {annotations_dir}/, "
            "or set data.coco.download: true")
    zip_path = annotations_dir / "annotations_trainval2017.zip"
    log.info("fetching COCO annotations from %s", url)
    http_get(url, zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = {Path(n).name: n for n in archive.namelist()}
            for wanted in ANNOTATION_FILES:
                if wanted not in names:
                    raise PipelineError(f"{url}: the zip has no {wanted}; check data.coco.annotations_url")
                with atomic_path(annotations_dir / wanted) as tmp, archive.open(names[wanted]) as src, \
                        open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        raise PipelineError(f"{url}: not a zip file ({err}); check data.coco.annotations_url") from err
    finally:
        zip_path.unlink(missing_ok=True)
    log.info("unpacked %s into %s", ", ".join(ANNOTATION_FILES), annotations_dir)


def main(snakemake) -> None:
    cfg = params_config(snakemake)
    download = network_settings(snakemake)["download"]
    if snakemake.rule == "fetch_pope":
        fetch_pope(cfg["data.pope"].get("url"), cfg["data.pope"].get("sha256"), snakemake.output[0], download)
    else:
        fetch_annotations(cfg["data.coco.annotations_url"], download, Path(snakemake.output.instances).parent)


if "snakemake" in globals():
    run_main(main, snakemake)
