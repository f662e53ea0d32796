#!/usr/bin/env bash
# Stage 3, preference alignment (DPO) of an image+audio+text model on align-anything's text-audio-to-text pairs, mixed
# with your own pairs (TRL's prompt/chosen/rejected JSON lines, audio paths under MEDIA_ROOT). A full fine-tune of the
# language model: the reference is a frozen copy of the starting checkpoint (`--ref_model_name_or_path`, sharded under
# ZeRO-3 like the policy). Batches mix audio, image and text-only pairs.
#
#   STAGE2=output/llama3-vision-audio-stage2 MY_PAIRS=data/my_pairs.jsonl MEDIA_ROOT=data/ bash examples/dpo_audio.sh
set -euo pipefail
STAGE2=${STAGE2:-output/llama3-vision-audio-stage2}
MY_PAIRS=${MY_PAIRS:-data/my_pairs.jsonl}
MEDIA_ROOT=${MEDIA_ROOT:-data}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-audio-dpo-audio}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.dpo \
  --model_name_or_path "$STAGE2" --ref_model_name_or_path "$STAGE2" \
  --deepspeed examples/ds_z3_config.json \
  --train_datasets "PKU-Alignment/align-anything,$MY_PAIRS," --train_template "AA_TA2T,TRL-Preference," \
  --train_name "text-audio-to-text,," --media_root ",$MEDIA_ROOT," \
  --freeze_vision_tower True --freeze_audio_tower True --freeze_mm_proj True --freeze_language_model False \
  --beta 0.1 --loss_type sigmoid \
  --max_length 2048 --truncation drop --skip_bad_rows True \
  --output_dir "$OUTPUT_DIR" --bf16 True --gradient_checkpointing True \
  --per_device_train_batch_size 2 --gradient_accumulation_steps 8 --num_train_epochs 1 \
  --learning_rate 5e-7 --lr_scheduler_type cosine --warmup_steps 0.1 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 --report_to tensorboard
