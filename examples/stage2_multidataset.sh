#!/usr/bin/env bash
# The seed's multi-dataset stage 2: LLaVA-Instruct-150K + A-OKVQA + VQAv2, one template per dataset (Hub access
# needed; the image paths of LLaVA-Instruct resolve against MEDIA_ROOT, the COCO images folder).
# HuggingFaceM4/VQAv2 is a loading script, which datasets>=4 no longer runs: it is read from the Hub's parquet
# conversion of it (revision refs/convert/parquet, logged), which holds the first 5 GB of each split (partial-train
# when cut). For the whole split, point its entry at a local parquet export with the VQAv2 columns (question,
# multiple_choice_answer, image) instead.
#
#   MODEL=output/llama3-vision-stage1 MEDIA_ROOT=data/coco/train2017 bash examples/stage2_multidataset.sh
set -euo pipefail
MODEL=${MODEL:-output/llama3-vision-stage1}
MEDIA_ROOT=${MEDIA_ROOT:-data/coco/train2017}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-stage2-multi}
MASTER_PORT=${MASTER_PORT:-29500}
TRAIN_DATASETS="liuhaotian/LLaVA-Instruct-150K,HuggingFaceM4/A-OKVQA,HuggingFaceM4/VQAv2,"
TRAIN_TEMPLATE="LLAVA,A-OKVQA,VQAv2,"
TRAIN_SPLIT="train,train,train,"

deepspeed --master_port "$MASTER_PORT" --module any2text.train \
  --model_name_or_path "$MODEL" \
  --deepspeed examples/ds_z3_config.json \
  --train_datasets "$TRAIN_DATASETS" --train_template "$TRAIN_TEMPLATE" --train_split "$TRAIN_SPLIT" \
  --train_data_files "llava_instruct_150k.json,,," \
  --media_root "$MEDIA_ROOT,,," \
  --output_dir "$OUTPUT_DIR" \
  --freeze_vision_tower True --freeze_mm_proj False --freeze_language_model False \
  --max_length 2048 --truncation drop \
  --bf16 True --gradient_checkpointing True \
  --per_device_train_batch_size 16 --num_train_epochs 1 \
  --learning_rate 2e-5 --lr_scheduler_type cosine --warmup_steps 0.03 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 --report_to tensorboard
