#!/usr/bin/env bash
# Stage 2 of the image+audio+text model: projectors + language model on instruction data of every modality, mixed
# by weight, from the stage-1 output folder. Under ZeRO-3 a rank whose batch lacks a modality still runs that
# encoder on a zero-contribution dummy, so nothing hangs.
#
#   STAGE1=output/llama3-vision-audio-stage1 bash examples/stage2_vision_audio.sh
set -euo pipefail
STAGE1=${STAGE1:-output/llama3-vision-audio-stage1}
LLAVA_INSTRUCT=${LLAVA_INSTRUCT:-data/LLaVA-Instruct}
OUTPUT_DIR=${OUTPUT_DIR:-output/llama3-vision-audio-stage2}
MASTER_PORT=${MASTER_PORT:-29500}

deepspeed --master_port "$MASTER_PORT" --module any2text.train \
  --model_name_or_path "$STAGE1" \
  --deepspeed examples/ds_z3_config.json \
  --train_datasets "$LLAVA_INSTRUCT,AudioCaps/AudioCaps,openslr/librispeech_asr,lmms-lab/ClothoAQA," \
  --train_template "LLaVA,AudioCaps,LibriSpeech,Clotho-AQA," \
  --train_split "train,train,train.clean.100,clotho_aqa_train," \
  --train_data_files "llava_v1_5_mix665k.json,,,," \
  --train_name ",,clean,," \
  --train_weights "4,1,1,1," \
  --media_root "$LLAVA_INSTRUCT/images,,,," \
  --freeze_vision_tower True --freeze_audio_tower True --freeze_mm_proj False --freeze_language_model False \
  --max_length 2048 --truncation drop --skip_bad_rows True \
  --output_dir "$OUTPUT_DIR" --bf16 True --gradient_checkpointing True \
  --per_device_train_batch_size 16 --num_train_epochs 1 \
  --learning_rate 2e-5 --lr_scheduler_type cosine --warmup_steps 0.03 \
  --save_strategy steps --save_steps 500 --save_total_limit 2 --logging_steps 10 \
  --dataloader_num_workers 4 --report_to tensorboard
