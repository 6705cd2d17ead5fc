#!/bin/bash
# The device run of benchmarks/allocation_gpu.py (issue #15): ResNet-56, 15 epochs, 3 seeds, on one GPU.
#
# Set-up here, before the call (the device machine reaches nothing; .gpu/ is ignored by git, carried):
#   echo /.gpu/ >> .git/info/exclude; mkdir -p .gpu/data .gpu/whl
#   cp -r ../shared/data/cifar10 .gpu/data/; mkdir .gpu/data/pretrained
#   cp ../shared/data/pretrained/resnet56-4bfd9763.th .gpu/data/pretrained/
#   pip download --no-deps torch-pruning==1.6.1 -d .gpu/whl
# Then run `bash benchmarks/allocation_gpu.sh [driver flags]` there with `.gpu` carried; env RUNS, EPOCHS,
# PARALLEL, DEADLINE override the defaults. Results land in $OUT: the table (json, md, png), driver.log,
# runs_meta.tgz (every run folder without weights) and models.tgz.part-* (base and seed-0 checkpoints).
set -o pipefail
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 FILTERPRUNE_CACHE=.gpu/cache MPLBACKEND=Agg
python3 -m pip install -q --no-index --no-deps --no-compile --target .gpu/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=$PWD/.gpu/site:$PWD/src
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, filterprune; print('torch', torch.__version__, torch.cuda.is_available())" || exit 4
RUNS=${RUNS:-runs/gpu56}
python3 benchmarks/allocation_gpu.py --data .gpu/data/cifar10 \
    --pretrained .gpu/data/pretrained/resnet56-4bfd9763.th --runs $RUNS \
    --out $OUT/allocation_comparison_resnet56 --epochs ${EPOCHS:-15} --parallel ${PARALLEL:-12} \
    --deadline-s ${DEADLINE:-470} "$@" --extra --finetune-keep-checkpoints 1 2>&1 | tee $OUT/driver.log
rc=$?
cd $RUNS && tar czf $OUT/runs_meta.tgz --exclude='*.safetensors' . 
ls base/model.safetensors *-s0/model.safetensors 2>/dev/null > models.txt
tar czf models.tgz -T models.txt && split -b 15M models.tgz $OUT/models.tgz.part-
ls -la $OUT
exit $rc
