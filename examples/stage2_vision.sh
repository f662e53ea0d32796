#!/usr/bin/env bash
# Stage 2 of the image+text model: projector + language model on LLaVA-Instruct (LLaVA-1.5 mix665k), starting from
# the stage-1 output folder.
#
#   STAGE1=output/llama3-vision-stage1 DATA=data/LLaVA-Instruct bash examples/stage2_vision.sh
set -euo pipefail
STAGE1=${STAGE1:-output/llama3-vision-stage1}
DATA=${DATA:-data/LLaVA-Instruct}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-stage2}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.train \
  --model_name_or_path "$STAGE1" \
  --deepspeed examples/ds_z3_config.json \
  --train_datasets "$DATA" --train_template LLaVA --train_split train \
  --train_data_files llava_v1_5_mix665k.json --media_root "$DATA/images" \
  --freeze_vision_tower True --freeze_mm_proj False --freeze_language_model False \
  --max_length 2048 --truncation drop --train_sampling_strategy group_by_length \
  --output_dir "$OUTPUT_DIR" --bf16 True --gradient_checkpointing True \
  --per_device_train_batch_size 16 --gradient_accumulation_steps 1 --num_train_epochs 1 \
  --learning_rate 2e-5 --lr_scheduler_type cosine --warmup_steps 0.03 --weight_decay 0.0 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 \
  --dataloader_num_workers 4 --report_to tensorboard
