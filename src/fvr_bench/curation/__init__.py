"""VividFace's MLLM-driven data curation (MLLM-Face90): face crops of each clip graded by
Qwen2.5-VL with a 100-point rubric, answers audited, clips scoring >= 90 kept.

rubric.py  the rubric as data (one source for prompt and parser)
prompt.py  the grading prompt written from the rubric
parse.py   robust reading of answers + audit flags; the final score is recomputed
faces.py   face-region crops of sampled frames
scorer.py  QwenVLScorer (local Qwen2.5-VL, greedy) → raw answer text
run.py     curate_command(cfg): resumable grading of a dataset → scores.csv, kept.txt
"""
