"""The JVM leg: SKaiNET's own JVM kernels (a user's Gradle output, by classpath) run through
JPype in one worker process per JVM configuration, judged against kernels_ref.

- `jdk`: find a JDK (>= 21 with jdk.incubator.vector preferred);
- `discovery`: scan jars / class directories for packed matmul kernels (class-file reader);
- `worker`: one JVM per configuration (JDK, lanes, JIT mode), cases fed over a pipe;
- `parity`: the kernel x format x shape x lanes x JIT-mode matrix and its verdicts;
- `fixtures`: the project's own Java test kernels (fixtures/jvm), compiled on demand.
"""
