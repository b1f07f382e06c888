"""A small RefCOCOg-layout data root of ultralytics' bus.jpg and zidane.jpg, each saved at three
JPEG qualities (different pixels, same sizes): the real photographs for `bench --data-root`.

    python scripts/photo_data_root.py OUT_DIR
"""
import io
import json
import pickle
import sys
from pathlib import Path

from PIL import Image

from refcocog_tools.report.figure_panels import ultralytics_photo

OBJECTS = {  # name -> [(category_id, box xyxy, expressions)]
    "bus.jpg": [(6, (22, 231, 805, 756), ["the blue bus", "a bus behind the people"]),
                (1, (48, 398, 245, 902), ["the man on the left", "person at the left edge"]),
                (1, (221, 405, 344, 857), ["the man in the middle"]),
                (1, (670, 380, 810, 875), ["the person on the right", "man cut off at the right"])],
    "zidane.jpg": [(1, (743, 48, 1141, 720), ["the man on the right"]),
                   (1, (123, 197, 1112, 710), ["the man in front", "the bald man"]),
                   (32, (437, 437, 524, 714), ["the red tie", "a tie"])],
}
root = Path(sys.argv[1])
(root / "images").mkdir(parents=True, exist_ok=True)
(root / "annotations").mkdir(parents=True, exist_ok=True)
images, anns, refs = [], [], []
ann_id = ref_id = sent_id = 0
for copy, quality in enumerate((95, 85, 75)):
    for name, objects in OBJECTS.items():
        image = Image.open(ultralytics_photo(name)).convert("RGB")
        image_id = 1000 + len(images)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=quality)
        (root / "images" / file_name).write_bytes(buffer.getvalue())
        images.append({"id": image_id, "file_name": file_name, "width": image.width,
                       "height": image.height})
        for cat, (x1, y1, x2, y2), sentences in objects:
            ann_id += 1
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat, "iscrowd": 0,
                         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                         "segmentation": [[x1, y1, x2, y1, x2, y2, x1, y2]]})
            split = "train" if copy == 2 else "test"
            sents = []
            for s in sentences:
                sents.append({"sent_id": sent_id, "sent": s, "raw": s, "tokens": s.split()})
                sent_id += 1
            refs.append({"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id,
                         "split": split, "category_id": cat, "file_name": file_name,
                         "sentences": sents, "sent_ids": [x["sent_id"] for x in sents]})
            ref_id += 1
categories = [{"id": 1, "name": "person", "supercategory": "person"},
              {"id": 6, "name": "bus", "supercategory": "vehicle"},
              {"id": 32, "name": "tie", "supercategory": "accessory"}]
(root / "annotations" / "instances.json").write_text(json.dumps(
    {"info": {"description": "bus.jpg and zidane.jpg"}, "images": images, "annotations": anns,
     "categories": categories}))
(root / "annotations" / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))
print(root)
