"""ipcrpc_cc_proto_library: .proto files to a C++ library of messages and stubs.

    load("@ipcrpc//bazel-compat:defs.bzl", "ipcrpc_cc_proto_library")

    ipcrpc_cc_proto_library(
        name = "calc_proto",
        srcs = ["calc.proto", "sub/types.proto"],
    )
    cc_binary(name = "server", srcs = ["server.cc"], deps = [":calc_proto"])

The Bazel twin of CMake's ipcrpc_add_proto_library (cmake/IpcrpcProtobuf.cmake):
the system's protoc runs protobuf's C++ generator and protoc-gen-ipcrpc (built
by Bazel) over `srcs`, and the generated NAME.pb.{h,cc} and
NAME.ipcrpc.{h,cc} become a cc_library linked to @ipcrpc//:ipcrpc and
protobuf. A proto is named relative to `import_root` (default: the package's
directory), and its headers are included by that name: `calc.proto` as
`#include "calc.ipcrpc.h"`, `sub/types.proto` as `#include "sub/types.ipcrpc.h"`
(and `import "sub/types.proto";` in another proto). protobuf's own .protos
(google/protobuf/*.proto) can always be imported.

Native proto_library/cc_proto_library are not used: they need
@com_google_protobuf, which would be downloaded and built.

This file is loaded from the @ipcrpc repository (the source tree, whose
bazel-compat/ directory holds it) so that it has one identity everywhere.
"""

IpcrpcProtoInfo = provider(
    doc = "The .proto files of an ipcrpc_cc_proto_library and of what it depends on.",
    fields = {
        "sources": "depset of the .proto Files, transitively",
        "import_roots": "depset of protoc -I directories (exec paths), transitively",
    },
)

# Labels in the repository that holds this file: the source tree, @ipcrpc.
_PLUGIN = Label("//:protoc-gen-ipcrpc")
_RUNTIME = Label("//:ipcrpc")

def _join(*parts):
    """Joins path parts, dropping empty ones and resolving '.' and '..'."""
    segments = []
    for part in parts:
        for segment in part.split("/"):
            if segment in ("", "."):
                continue
            if segment == ".." and segments and segments[-1] != "..":
                segments.pop()
            else:
                segments.append(segment)
    return "/".join(segments)

def _gen_impl(ctx):
    # The import root as an exec path, for source and generated .protos.
    root = _join(ctx.label.workspace_root, ctx.label.package, ctx.attr.import_root)
    deps = [dep[IpcrpcProtoInfo] for dep in ctx.attr.deps if IpcrpcProtoInfo in dep]
    roots = [root or "."]
    gen_roots = {}
    headers = []
    sources = []
    out_root = None
    for src in ctx.files.srcs:
        # A generated .proto sits under its output root (bazel-out/.../bin).
        source_root = _join(src.root.path, root)
        prefix = source_root + "/" if source_root else ""
        if not src.path.startswith(prefix) or not src.path.endswith(".proto"):
            fail("%s is not a .proto under the import root '%s' (import_root = %r)" %
                 (src.short_path, root or ".", ctx.attr.import_root))
        if src.root.path:
            gen_roots[source_root] = True
        base = src.path[len(prefix):-len(".proto")]
        header = ctx.actions.declare_file(ctx.attr.out_dir + "/" + base + ".pb.h")
        headers.append(header)
        sources.append(ctx.actions.declare_file(ctx.attr.out_dir + "/" + base + ".pb.cc"))
        if ctx.attr.plugin:
            headers.append(ctx.actions.declare_file(ctx.attr.out_dir + "/" + base + ".ipcrpc.h"))
            sources.append(ctx.actions.declare_file(ctx.attr.out_dir + "/" + base + ".ipcrpc.cc"))
        if out_root == None:
            # protoc writes NAME.pb.h for the proto NAME under --cpp_out.
            out_root = header.path[:-len("/" + base + ".pb.h")]
    roots += gen_roots.keys()

    import_roots = depset(roots, transitive = [dep.import_roots for dep in deps], order = "preorder")
    transitive_sources = depset(
        ctx.files.srcs,
        transitive = [dep.sources for dep in deps],
    )
    outputs = headers + sources
    if ctx.files.srcs:
        args = ctx.actions.args()
        args.add("--cpp_out=" + out_root)
        tools = []
        if ctx.attr.plugin:
            plugin = ctx.executable.plugin
            tools.append(plugin)
            args.add("--plugin=protoc-gen-ipcrpc=" + plugin.path)
            args.add("--ipcrpc_out=" + out_root)
        args.add_all(import_roots, format_each = "-I%s")
        args.add("-I" + ctx.attr.protobuf_include_dir)
        args.add_all(ctx.files.srcs)
        ctx.actions.run(
            executable = ctx.executable.protoc,
            arguments = [args],
            inputs = transitive_sources,
            tools = tools,
            outputs = outputs,
            mnemonic = "IpcrpcProtoc",
            progress_message = "protoc-gen-ipcrpc: %s" % ctx.label,
        )
    return [
        DefaultInfo(files = depset(outputs)),
        OutputGroupInfo(headers = depset(headers), sources = depset(sources)),
        IpcrpcProtoInfo(sources = transitive_sources, import_roots = import_roots),
    ]

_ipcrpc_proto_gen = rule(
    implementation = _gen_impl,
    attrs = {
        "srcs": attr.label_list(allow_files = [".proto"]),
        "deps": attr.label_list(),
        "import_root": attr.string(),
        "out_dir": attr.string(mandatory = True),
        "protoc": attr.label(
            default = "@ipcrpc_system//:protoc",
            executable = True,
            allow_single_file = True,
            cfg = "exec",
        ),
        "protobuf_include_dir": attr.string(default = "/usr/include"),
        # protoc-gen-ipcrpc, or None for the messages only.
        "plugin": attr.label(executable = True, cfg = "exec"),
    },
)

def _forward_impl(ctx):
    cc = ctx.attr.cc
    return [
        cc[CcInfo],
        ctx.attr.gen[IpcrpcProtoInfo],
        DefaultInfo(
            files = depset(transitive = [cc[DefaultInfo].files, ctx.attr.gen[DefaultInfo].files]),
            runfiles = cc[DefaultInfo].default_runfiles,
        ),
    ]

_ipcrpc_proto_library = rule(
    implementation = _forward_impl,
    attrs = {
        "cc": attr.label(mandatory = True, providers = [CcInfo]),
        "gen": attr.label(mandatory = True, providers = [IpcrpcProtoInfo]),
    },
)

def ipcrpc_cc_proto_library(
        name,
        srcs,
        deps = [],
        import_root = "",
        stubs = True,
        copts = [],
        **kwargs):
    """A C++ library of the messages and ipcrpc stubs of `srcs`.

    Args:
      name: the library; depend on it like on a cc_library.
      srcs: .proto files, under `import_root`.
      deps: other ipcrpc_cc_proto_library targets whose .protos `srcs`
        import, and any cc_library the generated code needs.
      import_root: the directory, relative to this package, that protos are
        named from (protoc's -I); default: this package's directory.
      stubs: also run protoc-gen-ipcrpc (NAME.ipcrpc.{h,cc}); False gives
        the messages only, without a dependency on the ipcrpc runtime.
      copts: extra compiler flags for the generated code.
      **kwargs: visibility, testonly, tags, ... as for any rule.
    """
    visibility = kwargs.pop("visibility", None)
    common = dict(kwargs)
    out_dir = "_ipcrpc_gen/" + name
    _ipcrpc_proto_gen(
        name = name + "_gen",
        srcs = srcs,
        deps = deps,
        import_root = import_root,
        out_dir = out_dir,
        plugin = _PLUGIN if stubs else None,
        visibility = ["//visibility:private"],
        **common
    )
    native.filegroup(
        name = name + "_gen_headers",
        srcs = [":" + name + "_gen"],
        output_group = "headers",
        visibility = ["//visibility:private"],
        **common
    )
    native.filegroup(
        name = name + "_gen_sources",
        srcs = [":" + name + "_gen"],
        output_group = "sources",
        visibility = ["//visibility:private"],
        **common
    )
    runtime = [_RUNTIME] if stubs else []
    native.cc_library(
        name = name + "_cc",
        srcs = [":" + name + "_gen_sources"],
        hdrs = [":" + name + "_gen_headers"],
        strip_include_prefix = out_dir,
        copts = copts,
        deps = deps + runtime + ["@ipcrpc_system//:protobuf"],
        visibility = ["//visibility:private"],
        **common
    )
    _ipcrpc_proto_library(
        name = name,
        cc = ":" + name + "_cc",
        gen = ":" + name + "_gen",
        visibility = visibility,
        **common
    )
