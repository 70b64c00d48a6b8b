#!/usr/bin/env bash
# The main job: compress LeNet-5 on real Fashion-MNIST to ~533x (nnz 2%, 3 bits).
# Pretrains the dense model first (runs/lenet5_dense), compresses it by ADMM with
# projections every 20 batches, then fine-tunes three epochs. Re-running resumes.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1 \
    && [ -z "${DATA_DIR:-}" ]; then
  echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist (needs root and apt)." >&2
  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)) >&2 \
    || { echo "Could not install it: put the IDX files in a folder and set DATA_DIR." >&2; exit 1; }
fi
DATA=${DATA_DIR:+--data_dir=$DATA_DIR}
COMMON="--dataset=fashion_mnist --arch=caffelenet -b 256 --seed=1 $DATA"
python run.py --mode=pretrain $COMMON --epochs=${PRETRAIN_EPOCHS:-3} --lr=0.01 --lr_sched=cos \
  --momentum=0.9 --wd=5e-4 --export=keras --logdir=runs/lenet5_dense
python run.py --mode=compress $COMMON --epochs=${EPOCHS:-4} --nnz_budget=0.02 --bit_budget=3 \
  --projint=20 --dualint=20 --lr=0.01 --lr_sched=cos --rho=0.05 --prox --wd=5e-4 --momentum=0.93 \
  --pretrain=runs/lenet5_dense/model_dense.keras --logdir=runs/lenet5_533x --export=keras
# Fine-tune to the allocation ADMM learned (bit widths and nonzeros per layer, --from_run):
# from its trained weights, pruned gradually in full precision, then quantized (finetune.py).
python run.py --mode=finetune $COMMON --epochs=${FT_EPOCHS:-3} --float_epochs=2 --prune_epochs=1 \
  --keep_support --optim=adam --lr=0.001 --lr_sched=cos --from_run=runs/lenet5_533x \
  --logdir=runs/lenet5_533x_ft --export=keras,saved_model,compressed
