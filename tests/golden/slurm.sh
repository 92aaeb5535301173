#!/bin/bash
# jacengine job array: submit with `bash THIS_FILE` on a SLURM login node.
# 1. init (creates the store once)  2. 8 shards  3. reductions after every shard.
set -euo pipefail

init=$(sbatch --parsable --job-name=jacengine-jacobian-init --time=04:00:00 --cpus-per-task=4 --mem=16G --partition=compute --account=lab42 \
  --wrap 'module load python/3.11 && source $HOME/venvs/jacengine/bin/activate && jacengine init --config CONFIG')

array=$(sbatch --parsable --dependency=afterok:${init} <<'JACENGINE_SHARD_HASH'
#!/bin/bash
#SBATCH --job-name=jacengine-jacobian
#SBATCH --array=0-7
#SBATCH --time=04:00:00
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --partition=compute
#SBATCH --account=lab42
#SBATCH --requeue
#SBATCH --open-mode=append
#SBATCH --output=jacengine-jacobian-%A_%a.log
#SBATCH --signal=B:TERM@300
module load python/3.11
source $HOME/venvs/jacengine/bin/activate
# SIGTERM before the time limit: jacengine stops between blocks and exits 75 (resumable).
jacengine compute --config CONFIG --shard-from-env --no-progress &
worker=$!
trap 'kill -TERM "$worker" 2>/dev/null' TERM
status=0; wait "$worker" || status=$?
if [ "$status" -gt 128 ]; then status=0; wait "$worker" || status=$?; fi
if [ "$status" -eq 75 ]; then
  scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$status"
JACENGINE_SHARD_HASH
)

sbatch --parsable --dependency=afterok:${array} --job-name=jacengine-jacobian-reduce --time=04:00:00 --cpus-per-task=4 --mem=16G --partition=compute --account=lab42 \
  --wrap 'module load python/3.11 && source $HOME/venvs/jacengine/bin/activate && jacengine reduce STORE --op saliency --op lag-profile --op window-sum --window 0:10'
printf 'submitted init %s, shards %s; progress: jacengine status --config %s --shards %s\n' "$init" "$array" CONFIG 8
