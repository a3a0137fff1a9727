"""Training a Seq2Seq model, one concern per module (`translator.train` re-exports the API;
the choice of precision is translator.precision).

- trainer.py: Trainer and train(): builds a run, the loop, the one stop rule
- steps.py: the compiled train and eval steps, per replica and across replicas
- losses.py: per-token cross-entropy, the masked/packed loss of a replica
- schedules.py: learning-rate schedules (swappable objects), the plateau rule
- state.py: counters, the training checkpoint and its managers, restore, worker sync
- validation.py: Validator: valid loss, BLEU, best checkpoint, early stopping
- history.py: progress bar, TensorBoard, the end-of-epoch line, the history file
- signals.py: SIGINT/SIGTERM stop after the step; TrainingInterrupted
- budget.py: training under a time budget (the clock, the planner, the budget schedule)
- data.py: corpora, tokenizers, encoded pairs, each epoch's batches
- output_dir.py: output directory checks, the other workers' scratch directory
- init_from.py: fine-tuning: the init model's checks, tokenizers and weights
"""
