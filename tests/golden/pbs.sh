#!/bin/bash
# jacengine job array: submit with `bash THIS_FILE` on a PBS Pro login node.
# 1. init (creates the store once)  2. 8 shards  3. reductions after every shard.
set -euo pipefail

init=$(qsub -N jacengine-jacobian-init -l select=1:ncpus=4:mem=16G -l walltime=04:00:00 -q compute -A lab42 -- /bin/bash -c 'module load python/3.11 && source $HOME/venvs/jacengine/bin/activate && jacengine init --config CONFIG')

array=$(qsub -W depend=afterok:${init} <<'JACENGINE_SHARD_HASH'
#!/bin/bash
#PBS -N jacengine-jacobian
#PBS -J 0-7
#PBS -l select=1:ncpus=4:mem=16G
#PBS -l walltime=04:00:00
#PBS -q compute
#PBS -A lab42
#PBS -r y
#PBS -j oe
cd "$PBS_O_WORKDIR"
module load python/3.11
source $HOME/venvs/jacengine/bin/activate
export JACENGINE_SHARD_COUNT=8
# SIGTERM at the walltime: jacengine stops between blocks and exits 75 (resumable).
jacengine compute --config CONFIG --shard-from-env --no-progress &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM
status=0; wait "$worker" || status=$?
if [ "$status" -gt 128 ]; then status=0; wait "$worker" || status=$?; fi
if [ "$status" -eq 75 ]; then
  qrerun "$PBS_JOBID"
fi
exit "$status"
JACENGINE_SHARD_HASH
)

qsub -N jacengine-jacobian-reduce -W depend=afterok:${array} -l select=1:ncpus=4:mem=16G -l walltime=04:00:00 -q compute -A lab42 -- /bin/bash -c 'module load python/3.11 && source $HOME/venvs/jacengine/bin/activate && jacengine reduce STORE --op saliency --op lag-profile --op window-sum --window 0:10'
printf 'submitted init %s, shards %s; progress: jacengine status --config %s --shards %s\n' "$init" "$array" CONFIG 8
