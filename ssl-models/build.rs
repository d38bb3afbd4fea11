//! Builds the oneDNN convolution shim (`onednn/conv.cpp`) for the feature `onednn`; nothing
//! otherwise.

fn main() {
    println!("cargo:rerun-if-changed=onednn/conv.cpp");
    #[cfg(feature = "onednn")]
    {
        cc::Build::new()
            .cpp(true)
            .file("onednn/conv.cpp")
            .flag_if_supported("-std=c++17")
            .opt_level(2)
            .compile("ssl_onednn_conv");
        println!("cargo:rustc-link-lib=dnnl");
    }
}
