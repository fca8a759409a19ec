# Stage: data. The demo's synthetic mini-COCO, POPE built by POPE's method, the real data fetched on demand,
# and the seeded samples (Parquet + published id lists) every later stage reads. Rules that may download run
# on the submitting host (localrule), since cluster nodes often have no internet.
# A file the user brought (data.coco.root, data.pope.file) is never a rule output, only an input: see
# pii/data/fetch.py. Params carry only what decides a file's content; the network settings (data.coco.download,
# image_url) only decide how a missing file is obtained, so the scripts read them from the config at run time.

from pii.data import (
    fetch as fetch_data,
)  # the name the fetch rules' run: blocks use; renaming it reruns them
from pii.data.dag import (
    coco_annotation,
    data_targets,
    pope_build_annotations,
    pope_file,
)
from pii.data.fetch import (
    BUILT_POPE_DIR,
    COCO_DOWNLOADS,
    DEMO_COCO_ROOT,
    POPE_DOWNLOADS,
)

# The demo's synthetic mini-COCO settings (data.demo; empty outside the demo, where rule demo_coco says so).
DEMO_DATA = config["data"]["demo"] or {}


rule demo_coco:
    output:
        instances=f"{DEMO_COCO_ROOT}/annotations/instances_val2017.json",
        captions=f"{DEMO_COCO_ROOT}/annotations/captions_val2017.json",
        images=directory(f"{DEMO_COCO_ROOT}/val2017"),
    log:
        "logs/data/demo_coco.log",
    conda:
        "../../envs/data.yaml"
    params:
        n_images=DEMO_DATA.get("n_images"),
        min_size=DEMO_DATA.get("min_size"),
        max_size=DEMO_DATA.get("max_size"),
        seed=config["seed"],
    script:
        "../scripts/demo_coco.py"


# The two download rules write only under resources/downloads/ and run from `run:` (see pii/data/fetch.py): a
# new release of the fetch code must not download the data again (Snakemake reruns a run: block whose text changes). They take no params: the URLs, the download
# switch and the pin decide how a missing file is obtained, and are read from the config when the rule runs.
rule fetch_coco_annotations:
    output:
        instances=f"{COCO_DOWNLOADS}/annotations/instances_val2017.json",
        captions=f"{COCO_DOWNLOADS}/annotations/captions_val2017.json",
    log:
        "logs/data/fetch_coco_annotations.log",
    localrule: True
    run:
        fetch_data.run_rule("coco_annotations", output, log[0], config)


rule fetch_pope:
    output:
        f"{POPE_DOWNLOADS}/{{pin}}/{{file_name}}",
    log:
        "logs/data/fetch_pope/{pin}/{file_name}.log",
    localrule: True
    run:
        fetch_data.run_rule("pope", output, log[0], config)


rule pope_build:
    input:
        instances=pope_build_annotations(config),
    output:
        random=f"{BUILT_POPE_DIR}/coco_pope_random.json",
        popular=f"{BUILT_POPE_DIR}/coco_pope_popular.json",
        adversarial=f"{BUILT_POPE_DIR}/coco_pope_adversarial.json",
    log:
        "logs/data/pope_build.log",
    conda:
        "../../envs/data.yaml"
    params:
        n_images=config["data"]["pope_build"]["n_images"],
        n_per_label=config["data"]["pope_build"]["n_per_label"],
        min_objects=config["data"]["pope_build"]["min_objects"],
        seed=config["seed"],
    script:
        "../scripts/pope_build.py"


# Every POPE task samples its own split file: the paper's task pope (data.pope) and any further one (tasks.<t>.pope).
rule sample_pope:
    input:
        pope=lambda wc: pope_file(config, wc.task),
        instances=coco_annotation(config, "instances"),
    output:
        table="results/data/{task}_sample.parquet",
        ids="results/data/{task}_sample_ids.txt",
    log:
        "logs/data/sample_{task}.log",
    wildcard_constraints:
        task="|".join(POPE_TASKS),
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        n=lambda wc: config["sampling"][wc.task]["n"],
        balanced=lambda wc: config["sampling"][wc.task]["balanced"],
        coco_root=lambda wc: config["data"]["coco"]["root"],
        seed=config["seed"],
    script:
        "../scripts/sample_pope.py"


rule sample_caption:
    input:
        instances=coco_annotation(config, "instances"),
    output:
        table=sample_path("caption"),
        ids="results/data/caption_sample_ids.txt",
    log:
        "logs/data/sample_caption.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        n=config["sampling"]["caption"]["n"],
        # through a function: Snakemake would read braces in a prompt as wildcards
        question=lambda wc: config["tasks"]["caption"]["question"],
        coco_root=lambda wc: config["data"]["coco"]["root"],
        seed=config["seed"],
    script:
        "../scripts/sample_caption.py"
