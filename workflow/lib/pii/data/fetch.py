"""Stage data / fetch: where each data file comes from, and the downloads of the ones the user does not have.

Ownership: a file the user brought (anything under ``data.coco.root``, ``data.pope.file``) is only ever read.
Downloads go to ``resources/downloads/`` alone, so no rule output can ever be a user's file (Snakemake deletes
a job's outputs before it reruns it). The data rules run this module from a ``run:`` block rather than as a
``script:``: Snakemake reruns a script rule whenever the script is newer than its outputs, and a new release of
this file must not fetch the data again.

Every download goes to a temporary file next to its destination and is renamed into place only when complete
(and, where a checksum is pinned, verified), so an interrupted or failed fetch never leaves a usable-looking file.
"""

import http.client
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from pathlib import Path

from pii.core.stage import PipelineError, log, setup_logging
from pii.core.tables import atomic_path, sha256_file

RETRIES = 4
TIMEOUT_S = 60
ANNOTATION_FILES = ("instances_val2017.json", "captions_val2017.json")

DOWNLOADS = "resources/downloads"  # the only folder a download writes to
COCO_DOWNLOADS = f"{DOWNLOADS}/coco"  # same layout as a COCO root: annotations/, val2017/, val2014/, ...
POPE_DOWNLOADS = f"{DOWNLOADS}/pope"
DEMO_COCO_ROOT = "resources/demo/coco"  # built by the demo_coco rule, not brought by the user
BUILT_POPE_DIR = "results/pope_built"  # POPE files built by the pope_build rule


# --- where each file comes from -----------------------------------------------------------------------------

def coco_annotation_path(root: str | None, kind: str) -> str:
    """A COCO 2017 annotation file (kind: instances or captions): the user's copy under ``root`` when it is
    there (only read), the demo's when the demo builds ``root``, otherwise the pipeline's own download."""
    name = f"annotations/{kind}_val2017.json"
    if root and (root == DEMO_COCO_ROOT or Path(root, name).is_file()):
        return f"{root}/{name}"
    return f"{COCO_DOWNLOADS}/{name}"


def pope_download_path(url: str, sha256: str | None) -> str:
    """Where the pinned POPE file is downloaded to: one folder per pin, so a new pin fetches anew."""
    name = Path(urllib.parse.urlparse(url).path).name or "pope.json"
    return f"{POPE_DOWNLOADS}/{sha256[:16] if sha256 else 'unpinned'}/{name}"


def pope_path(pope: dict) -> str:
    """The POPE file the samples read: ``data.pope.file`` (the user's, or one pope_build makes) or, when that is
    null, the download of ``data.pope.url``."""
    return pope["file"] or pope_download_path(pope["url"], pope.get("sha256"))


def pope_source(config: dict, task: str) -> tuple[str, dict]:
    """The config key and POPE source (file, url, sha256) a POPE task samples: ``data.pope`` for the paper's task,
    ``tasks.<task>.pope`` for a further split."""
    own = config["tasks"][task].get("pope")
    return (f"tasks.{task}.pope", own) if own else ("data.pope", config["data"]["pope"])


def is_pipeline_output(path: str) -> bool:
    """True for the files rules make (builds and downloads); everything else is the user's."""
    return Path(path).as_posix().startswith((f"{BUILT_POPE_DIR}/", f"{DOWNLOADS}/", f"{DEMO_COCO_ROOT}/"))


def check_pope_pin(path: str | Path, sha256: str | None, key: str = "data.pope") -> None:
    """A user's POPE file that is not the pinned one is reported, never replaced (a download was verified when
    it was fetched, and a built file is not the official one)."""
    if not sha256 or is_pipeline_output(str(path)):
        return
    got = sha256_file(path)
    if got != sha256:
        raise PipelineError(f"{path}: sha256 {got} differs from the pinned {key}.sha256 {sha256}; the file was "
                            "left as it is. Replace it with POPE's official file of that split, or set "
                            f"{key}.sha256: null to use this file as it is")


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


def network_settings(config: dict) -> dict:
    """``data.coco.download`` and ``image_url``, read from the run's config rather than from params: they decide
    only how a missing file is obtained, never its content, so editing them must not rerun any job."""
    coco = config["data"]["coco"]
    return {"download": bool(coco.get("download")), "image_url": coco.get("image_url")}


def fetch_pope(url: str | None, sha256: str | None, dest: str | Path, download: bool = True) -> None:
    if not url:
        raise PipelineError("data.pope.file and data.pope.url are both null: download "
                            "output/coco/coco_pope_adversarial.json from the POPE repository (AoiDragon/POPE) and "
                            "set data.pope.file to it, or set data.pope.url")
    if not download:
        pinned = f" (sha256 {sha256})" if sha256 else ""
        raise PipelineError(f"the POPE file is not here and data.coco.download is false: download {url}{pinned} "
                            f"to {dest} or anywhere and set data.pope.file to it, or set data.coco.download: true")
    log.info("fetching POPE from %s", url)
    http_get(url, dest, sha256=sha256)
    log.info("POPE file %s verified (sha256 %s)", dest, sha256 or "not pinned")


def fetch_annotations(url: str | None, download: bool, dest_dir: str | Path, root: str | None = None) -> None:
    """Fetch COCO's annotations zip and unpack the two val2017 files the pipeline reads into ``dest_dir``."""
    dest_dir = Path(dest_dir)
    if not (download and url):
        where = f"{root}/annotations/" if root else "a folder annotations/ and set data.coco.root to its parent"
        raise PipelineError(
            f"COCO annotations missing: put {' and '.join(ANNOTATION_FILES)} from annotations_trainval2017.zip "
            f"({url or 'from the COCO website'}) into {where}, or set data.coco.download: true to fetch them into "
            f"{dest_dir}/")
    zip_path = dest_dir / "annotations_trainval2017.zip"
    log.info("fetching COCO annotations from %s", url)
    http_get(url, zip_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            names = {Path(n).name: n for n in archive.namelist()}
            for wanted in ANNOTATION_FILES:
                if wanted not in names:
                    raise PipelineError(f"{url}: the zip has no {wanted}; check data.coco.annotations_url")
                with atomic_path(dest_dir / wanted) as tmp, archive.open(names[wanted]) as src, \
                        open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
    except zipfile.BadZipFile as err:
        raise PipelineError(f"{url}: not a zip file ({err}); check data.coco.annotations_url") from err
    finally:
        zip_path.unlink(missing_ok=True)
    log.info("unpacked %s into %s", ", ".join(ANNOTATION_FILES), dest_dir)


def run_rule(what: str, output, log_file, config: dict) -> None:
    """Entry point of the fetch rules' ``run:`` blocks (what: "pope" or "coco_annotations"). Everything comes
    from the run's config: nothing here decides a file's content beyond the pinned checksum."""
    setup_logging(log_file)
    data = config["data"]
    download = network_settings(config)["download"]
    try:
        if what == "pope":
            fetch_pope(data["pope"].get("url"), data["pope"].get("sha256"), output[0], download)
        else:
            fetch_annotations(data["coco"].get("annotations_url"), download, Path(output.instances).parent,
                              data["coco"].get("root"))
    except PipelineError as err:
        log.error("%s", err)
        raise
