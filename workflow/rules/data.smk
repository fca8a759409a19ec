# Stage: data. The demo's synthetic mini-COCO, POPE built by POPE's method, the real data fetched on demand,
# and the seeded samples (Parquet + published id lists) every later stage reads. Rules that may download run
# on the submitting host (localrule), since cluster nodes often have no internet.
# Params carry only what decides a file's content. The network settings (data.coco.download, image_url) only
# decide how a missing file is obtained, so the scripts read them from the config at run time: switching
# downloads off, or to a mirror, must not rerun (and so first delete) fetched data or the samples.


# When the demo config points the COCO root at the demo folder, the builder, not the downloader, makes it.
ruleorder: demo_coco > fetch_coco_annotations
ruleorder: build_pope > fetch_pope


rule demo_coco:
    output:
        instances="resources/demo/coco/annotations/instances_val2017.json",
        captions="resources/demo/coco/annotations/captions_val2017.json",
        images=directory("resources/demo/coco/val2017"),
    log:
        "logs/data/demo_coco.log",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=canonical(("data", "demo"), "seed"),
    script:
        "../scripts/demo_coco.py"


rule fetch_coco_annotations:
    output:
        instances=coco_annotation("instances"),
        captions=coco_annotation("captions"),
    log:
        "logs/data/fetch_coco_annotations.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        cfg=canonical(("data", "coco", "annotations_url")),
    script:
        "../scripts/fetch_data.py"


rule fetch_pope:
    output:
        config["data"]["pope"]["file"],
    log:
        "logs/data/fetch_pope.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        cfg=canonical(("data", "pope")),
    script:
        "../scripts/fetch_data.py"


rule build_pope:
    input:
        instances=config["data"]["pope_build"]["annotations"],
    output:
        random="results/pope_built/coco_pope_random.json",
        popular="results/pope_built/coco_pope_popular.json",
        adversarial="results/pope_built/coco_pope_adversarial.json",
    log:
        "logs/data/build_pope.log",
    conda:
        "../../envs/data.yaml"
    params:
        cfg=canonical(("data", "pope_build"), "seed"),
    script:
        "../scripts/pope_build.py"


rule sample_pope:
    input:
        pope=config["data"]["pope"]["file"],
        instances=coco_annotation("instances"),
    output:
        table=sample_path("pope"),
        ids="results/data/pope_sample_ids.txt",
    log:
        "logs/data/sample_pope.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        cfg=canonical(("sampling", "pope"), ("data", "coco", "root"), "seed"),
    script:
        "../scripts/sample.py"


rule sample_caption:
    input:
        instances=coco_annotation("instances"),
    output:
        table=sample_path("caption"),
        ids="results/data/caption_sample_ids.txt",
    log:
        "logs/data/sample_caption.log",
    localrule: True
    conda:
        "../../envs/data.yaml"
    params:
        cfg=canonical(
            ("sampling", "caption"),
            ("tasks", "caption", "question"),
            ("data", "coco", "root"),
            "seed",
        ),
    script:
        "../scripts/sample.py"
