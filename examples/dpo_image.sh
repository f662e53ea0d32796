#!/usr/bin/env bash
# Stage 3, preference alignment (DPO) of an image+text model on RLAIF-V and align-anything's text-image-to-text
# pairs, with LoRA on the language model: the reference is the same model with its adapters disabled (no second copy).
# Each image is encoded once per pair; log-probs are computed at the answer tokens only. Then merge the adapter.
#
#   STAGE2=output/llama3-vision-audio-stage2 bash examples/dpo_image.sh
set -euo pipefail
STAGE2=${STAGE2:-output/llama3-vision-audio-stage2}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-audio-dpo-image}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.dpo \
  --model_name_or_path "$STAGE2" \
  --deepspeed examples/ds_z3_config.json \
  --train_datasets "openbmb/RLAIF-V-Dataset,PKU-Alignment/align-anything," --train_template "RLAIF-V,AA_TI2T," \
  --train_name ",text-image-to-text," --train_weights "1,1," \
  --freeze_vision_tower True --freeze_audio_tower True --freeze_mm_proj True --freeze_language_model False \
  --use_peft True --lora_r 64 --lora_alpha 128 --lora_dropout 0.0 \
  --beta 0.1 --loss_type sigmoid \
  --max_length 2048 --truncation drop --skip_bad_rows True \
  --output_dir "$OUTPUT_DIR" --bf16 True --gradient_checkpointing True \
  --per_device_train_batch_size 4 --gradient_accumulation_steps 4 --num_train_epochs 1 \
  --learning_rate 5e-6 --lr_scheduler_type cosine --warmup_steps 0.1 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 --report_to tensorboard

any2text merge-lora --model "$OUTPUT_DIR" --output "$OUTPUT_DIR-merged"
