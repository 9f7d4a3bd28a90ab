pub fn hi(){}
