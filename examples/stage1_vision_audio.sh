#!/usr/bin/env bash
# Stage 1 of the image+audio+text model (LlamaVisionAudio from `any2text build`): both projectors, everything else
# frozen, on image captions and audio captions together.
#
#   MODEL=checkpoints/llama3-vision-audio bash examples/stage1_vision_audio.sh
set -euo pipefail
MODEL=${MODEL:-checkpoints/llama3-vision-audio}
LLAVA_PRETRAIN=${LLAVA_PRETRAIN:-data/LLaVA-Pretrain}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-audio-stage1}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.train \
  --model_name_or_path "$MODEL" \
  --deepspeed examples/ds_z3_config.json \
  --train_datasets "$LLAVA_PRETRAIN,AudioCaps/AudioCaps,Clotho/clotho," \
  --train_template "LLaVA-Pretrain,AudioCaps,Clotho," \
  --train_split "train,train,development," \
  --train_data_files "blip_laion_cc_sbu_558k.json,,," \
  --media_root "$LLAVA_PRETRAIN/images,,," \
  --freeze_vision_tower True --freeze_audio_tower True --freeze_mm_proj False --freeze_language_model True \
  --max_length 2048 --truncation drop \
  --output_dir "$OUTPUT_DIR" --bf16 True \
  --per_device_train_batch_size 32 --num_train_epochs 1 \
  --learning_rate 1e-3 --lr_scheduler_type cosine --warmup_steps 0.03 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 \
  --dataloader_num_workers 4 --report_to tensorboard
