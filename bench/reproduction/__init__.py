"""The AERO reproduction (Jha & Reagen, arXiv 2410.13060); `bench/reproduce.py` is its command.

Its modules, the paper's numbers first and the whole run last:

    paper      the paper's reference numbers, each with the table or figure it comes from
    budgets    how large a reproduction is: model preset, tokens, what secure inference measures
    workspace  one reproduction's folders and the files of each variant's records
    stages     the per-variant stages: train, entropy, mpc, accuracy
    shapes     secure-inference cost at the paper's exact shapes (cost model and measurements)
    collect    the stages' records read back as tidy frames
    tables     Table 4's layout, the paper-shape table, the head distribution beside the paper's
    findings   each claim of the paper checked against this run
    markdown   the markdown views of the tables (every number a formatted CSV cell)
    noise      run-to-run differences between two runs' tables
    figures    the reproduction's figures, drawn from its frames
    pipeline   all of it in order, resumable
"""
