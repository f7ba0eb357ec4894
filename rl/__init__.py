"""The RL loop: the batch contract (rl.batch), the driver, prompt samplers, actor groups, the math RL
recipes and their bootstrap. Imports flow experiments -> rl -> (rollout, reward, learner) -> minimind;
rl.batch is a leaf the three sides share."""
