#!/usr/bin/env bash
# Stage 1 of the image+text model (a stock Llava checkpoint from `any2text build`): train the projector only, on
# LLaVA-Pretrain 558K captions.
#
#   MODEL=checkpoints/llama3-vision DATA=data/LLaVA-Pretrain bash examples/stage1_vision.sh
#
# Multi-node: add `--hostfile hostfile --master_addr <first node>` after `deepspeed` (see `any2text.training.train`).
set -euo pipefail
MODEL=${MODEL:-checkpoints/llama3-vision}
DATA=${DATA:-data/LLaVA-Pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-stage1}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.train \
  --model_name_or_path "$MODEL" \
  --deepspeed examples/ds_z2_config.json \
  --train_datasets "$DATA" --train_template LLaVA-Pretrain --train_split train \
  --train_data_files blip_laion_cc_sbu_558k.json --media_root "$DATA/images" \
  --freeze_vision_tower True --freeze_mm_proj False --freeze_language_model True \
  --max_length 2048 --truncation drop \
  --output_dir "$OUTPUT_DIR" --bf16 True \
  --per_device_train_batch_size 32 --gradient_accumulation_steps 1 --num_train_epochs 1 \
  --learning_rate 1e-3 --lr_scheduler_type cosine --warmup_steps 0.03 --weight_decay 0.0 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 \
  --dataloader_num_workers 4 --report_to tensorboard
