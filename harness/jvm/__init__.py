"""The JVM leg: SKaiNET's own JVM kernels (a user's Gradle output, by classpath) run through
JPype in one worker process per JVM configuration, judged against kernels_ref.

- `jdk`: find a JDK (>= 21 with jdk.incubator.vector preferred);
- `discovery`: scan jars / class directories for every class implementing a kernel interface
  of sk.ainet.backend.api.kernel (and packed kernels by signature), each run or listed with
  its reason (class-file reader);
- `worker`: one JVM per configuration (JDK, lanes, JIT mode), cases fed over a pipe (packed
  weights as a byte array or a mapped MemorySegment; dense GEMMs);
- `parity`: the kernel x format x shape x lanes x JIT-mode matrix and its verdicts;
- `fixtures`: the project's own Java test kernels (fixtures/jvm), compiled on demand.
"""
