def write_report(out):
    raise NotImplementedError
