"""Stage data: the seeded samples (POPE questions, COCO images to caption), POPE built by POPE's method, the demo's
synthetic mini-COCO, and the downloads of real data the user does not have. Reads COCO and POPE files (never
writes them); writes results/data/, results/pope_built/ and resources/."""
