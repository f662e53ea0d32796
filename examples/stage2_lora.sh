#!/usr/bin/env bash
# Stage 2 with LoRA on the language model (never the encoders); the projectors train fully and are saved beside the
# adapter. Then merge into a plain checkpoint that loads with the Auto classes.
#
#   STAGE1=output/llama3-vision-audio-stage1 bash examples/stage2_lora.sh
set -euo pipefail
STAGE1=${STAGE1:-output/llama3-vision-audio-stage1}
LLAVA_INSTRUCT=${LLAVA_INSTRUCT:-data/LLaVA-Instruct}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-audio-lora}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.train \
  --model_name_or_path "$STAGE1" \
  --deepspeed examples/ds_z2_config.json \
  --train_datasets "$LLAVA_INSTRUCT,AudioCaps/AudioCaps," --train_template "LLaVA,AudioCaps," \
  --train_data_files "llava_v1_5_mix665k.json,," --media_root "$LLAVA_INSTRUCT/images,," \
  --freeze_vision_tower True --freeze_audio_tower True --freeze_mm_proj False --freeze_language_model False \
  --use_peft True --lora_r 128 --lora_alpha 256 --lora_dropout 0.05 \
  --lora_target_modules q_proj k_proj v_proj o_proj gate_proj up_proj down_proj \
  --max_length 2048 --truncation drop \
  --output_dir "$OUTPUT_DIR" --bf16 True --gradient_checkpointing True \
  --per_device_train_batch_size 16 --num_train_epochs 1 \
  --learning_rate 2e-4 --lr_scheduler_type cosine --warmup_steps 0.03 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 --report_to tensorboard

any2text merge-lora --model "$OUTPUT_DIR" --output "$OUTPUT_DIR-merged"
