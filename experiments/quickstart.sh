#!/usr/bin/env bash
# The main job: compress LeNet-5 on real Fashion-MNIST to ~533x with one command.
# The model starts untrained, so the first 2 of the 10 epochs train it densely; then ADMM
# learns how many nonzeros and bits each layer gets, and the learned allocation is trained
# by gradual pruning and quantized fine-tuning (sqjl_tf.compress). Re-running resumes: the
# finished stages in runs/lenet5_533x/stages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! ls /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte* >/dev/null 2>&1 \
    && [ -z "${DATA_DIR:-}" ]; then
  echo "Fashion-MNIST not found: installing Debian's dataset-fashion-mnist (needs root and apt)." >&2
  (apt-get install -y dataset-fashion-mnist || (apt-get update && apt-get install -y dataset-fashion-mnist)) >&2 \
    || { echo "Could not install it: put the IDX files in a folder and set DATA_DIR." >&2; exit 1; }
fi
python run.py --dataset=fashion_mnist --arch=caffelenet -b 256 --seed=1 ${DATA_DIR:+--data_dir=$DATA_DIR} \
  --target_rate=533 --epochs=${EPOCHS:-10} --logdir=runs/lenet5_533x
