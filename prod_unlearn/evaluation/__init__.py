"""The machinery every task uses: greedy generation, BLEU and perplexity, the evaluation cache,
bootstrap intervals. The tasks themselves are ``prod_unlearn/tasks/``."""
