# Sourced by cpu_multiprocess_smoke.sh and cuda_smoke.sh: the methods a smoke run covers and the per-method
# overrides that make each one take 2 tiny steps (the shared COMMON overrides stay in each script).
SMOKE_METHODS="flow_dpo diffusion_dpo rwr draft grpo ddpo prdp dragon instructvideo latent_reward"
declare -A EXTRA=(
  [flow_dpo]="num_samples_per_prompt=2 sample_steps=2"
  [diffusion_dpo]="num_samples_per_prompt=2 sample_steps=2"
  [rwr]="num_samples_per_prompt=2 sample_steps=2"
  [draft]="sample_steps=2"
  [grpo]="group_size=2 rollout_steps=2 sample_steps=2"
  [ddpo]="samples_per_prompt=2 stat_min_count=2 sample_steps=2"
  [prdp]="group_size=2 sample_steps=2"
  [dragon]="group_size=2 sample_steps=2"
  [instructvideo]="sample_steps=4"
  [latent_reward]="eval_every=0 sample_steps=2"
)
